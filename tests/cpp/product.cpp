// The C++ wrapper's distances, host classifiers and trainer
// (tests/cpp_wrapper.rs): a C++ lambda twin of tests/native/twin.rs's
// network gives its TorchScript twin's distances, a measurement can be
// cancelled, and a trainer checkpoint resumes bit for bit.
// usage: product TWIN_DIR TRAINABLE.pt
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "moth.hpp"

namespace {
constexpr size_t kSide = 6, kHidden = 12, kClasses = 4, kPerClass = 10;

template <typename T> std::vector<T> read(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<T> v(raw.size() / sizeof(T));
    std::copy(raw.begin(), raw.end(), reinterpret_cast<char *>(v.data()));
    return v;
}

int failures = 0;
void expect(bool ok, const std::string &what) {
    if (!ok) {
        std::cerr << "FAILED: " << what << "\n";
        ++failures;
    }
}

void host_twin_matches_torchscript(const std::string &dir) {
    const size_t in = kSide * kSide;
    auto w = read<float>(dir + "/weights.f32");
    const float *w1 = w.data(), *b1 = w1 + kHidden * in, *w2 = b1 + kHidden,
                *b2 = w2 + kClasses * kHidden;
    auto hidden = [=](const float *x, double *h) {
        for (size_t j = 0; j < kHidden; j++) {
            double a = b1[j];
            for (size_t i = 0; i < in; i++) a += double(w1[j * in + i]) * x[i];
            h[j] = std::tanh(a);
        }
    };
    auto forward = [=](const float *x, const moth::Classifier::Shape &s, float *logits) {
        double h[kHidden];
        for (size_t n = 0; n < s[0]; n++) {
            hidden(x + n * in, h);
            for (size_t k = 0; k < kClasses; k++) {
                double z = b2[k];
                for (size_t j = 0; j < kHidden; j++) z += double(w2[k * kHidden + j]) * h[j];
                logits[n * kClasses + k] = float(z);
            }
        }
    };
    auto input_grad = [=](const float *x, const moth::Classifier::Shape &s, const float *g,
                          float *gx) {
        double h[kHidden], da[kHidden];
        for (size_t n = 0; n < s[0]; n++) {
            hidden(x + n * in, h);
            for (size_t j = 0; j < kHidden; j++) {
                double dh = 0;
                for (size_t k = 0; k < kClasses; k++)
                    dh += double(w2[k * kHidden + j]) * g[n * kClasses + k];
                da[j] = dh * (1 - h[j] * h[j]);
            }
            for (size_t i = 0; i < in; i++) {
                double d = 0;
                for (size_t j = 0; j < kHidden; j++) d += double(w1[j * in + i]) * da[j];
                gx[n * in + i] = float(d);
            }
        }
    };
    auto host = moth::Classifier::from_host(forward, input_grad, kClasses);
    auto script = moth::Classifier::from_torchscript(dir + "/mlp.pt", 1, kSide, kSide);
    auto pixels = read<float>(dir + "/images.f32");
    auto labels = read<int64_t>(dir + "/labels.i64");
    const int64_t n = int64_t(kClasses * kPerClass);
    auto x = moth::Tensor::from_buffer(pixels.data(), MOTH_DTYPE_FLOAT32,
                                       {n, 1, int64_t(kSide), int64_t(kSide)});
    auto y = moth::Tensor::from_buffer(labels.data(), MOTH_DTYPE_INT64, {n});
    moth::DistanceConfig cfg("quick");
    cfg.samples(8).steps(30).seeds({0});
    auto a = moth::measure_distances(script, cfg, x, y, kClasses).matrix();
    auto b = moth::measure_distances(host, cfg, x, y, kClasses).matrix();
    double worst = 0;
    size_t measured = 0;
    for (size_t i = 0; i < a.size(); i++) {
        worst = std::fmax(worst, std::fabs(a[i] - b[i]) / std::fmax(a[i], 1e-9));
        measured += a[i] > 0;
    }
    std::printf("C++ host twin: %zu measured, max relative difference %.3g\n", measured, worst);
    expect(measured >= kClasses && worst < 1e-3, "the C++ twin's distances match TorchScript's");

    size_t calls = 0;
    try {
        moth::measure_distances(script, cfg, x, y, kClasses, {{0, 1}},
                                [&](size_t, size_t) { return ++calls > 5; });
        expect(false, "a cancelled measurement returns");
    } catch (const moth::Error &e) {
        expect(e.status() == MOTH_STATUS_CANCELLED && calls == 1, "cancel gives MOTH_STATUS_CANCELLED");
    }
    auto one = moth::measure_distances(script, cfg, x, y, kClasses, {{0, 1}});
    expect(one.trigger(0, 1).has_value() == (one.matrix()[1] > 0), "trigger of a chosen pair");
    expect(!one.trigger(1, 0).has_value(), "no trigger for a pair not chosen");

    auto thrower = moth::Classifier::from_host(
        [](const float *, const moth::Classifier::Shape &, float *) {
            throw std::runtime_error("model offline");
        },
        input_grad, kClasses);
    try {
        moth::measure_distances(thrower, cfg, x, y, kClasses);
        expect(false, "a throwing host model fails the measurement");
    } catch (const moth::Error &e) {
        expect(e.status() == MOTH_STATUS_CALLBACK &&
                   std::string(e.what()).find("model offline") != std::string::npos,
               "the exception's message reaches the caller");
    }
}

void trainer_resumes_bit_for_bit(const std::string &path, const std::string &dir) {
    std::vector<float> px(16 * 784);
    std::vector<int64_t> ys(16);
    for (size_t i = 0; i < px.size(); i++) px[i] = float((i * 7919) % 255) / 255.0f;
    for (size_t i = 0; i < ys.size(); i++) ys[i] = int64_t(i % 10);
    auto x = moth::Tensor::from_buffer(px.data(), MOTH_DTYPE_FLOAT32, {16, 1, 28, 28});
    auto y = moth::Tensor::from_buffer(ys.data(), MOTH_DTYPE_INT64, {16});
    auto ref = moth::Classifier::from_torchscript(path, 1, 28, 28);
    moth::Trainer t(ref, "pretraining");
    t.step(x, y);
    t.step(x, y);
    auto bytes = t.to_bytes();
    t.save(dir + "/trainer.ckpt");
    double l3 = t.step(x, y);
    auto other = moth::Classifier::from_torchscript(path, 1, 28, 28);
    auto r = moth::Trainer::load(other, dir + "/trainer.ckpt");
    double r3 = r.step(x, y);
    auto again = moth::Classifier::from_torchscript(path, 1, 28, 28);
    auto b = moth::Trainer::from_bytes(again, bytes);
    double b3 = b.step(x, y);
    std::printf("trainer: loss at step 3 %.9g, resumed from file %.9g, from bytes %.9g\n", l3, r3,
                b3);
    expect(l3 == r3 && l3 == b3 && r.steps() == 3, "resumed trainers take the same step");
    std::vector<float> la(160), lb(160);
    ref.forward(x).copy_to(la.data(), la.size() * sizeof(float));
    other.forward(x).copy_to(lb.data(), lb.size() * sizeof(float));
    expect(la == lb, "resumed model equals the uninterrupted one");
    try {
        moth::Trainer bad(ref, "rmsprop");
        expect(false, "an unknown optimiser is refused");
    } catch (const moth::Error &e) {
        expect(e.status() == MOTH_STATUS_INVALID_CONFIG, "unknown optimiser: INVALID_CONFIG");
    }
}
} // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::cerr << "usage: product TWIN_DIR TRAINABLE.pt\n";
        return 2;
    }
    try {
        moth::check_abi();
        host_twin_matches_torchscript(argv[1]);
        trainer_resumes_bit_for_bit(argv[2], argv[1]);
    } catch (const std::exception &e) {
        std::cerr << "FAILED with an exception: " << e.what() << "\n";
        return 1;
    }
    if (failures == 0) std::printf("ok\n");
    return failures == 0 ? 0 : 1;
}
