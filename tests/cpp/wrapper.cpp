// Checks of the C++ wrapper (bindings/cpp/moth.hpp), built and run by
// tests/cpp_wrapper.rs. Each check prints "ok NAME" or fails with a message
// (exit status 1). A tiny linear model on 1x4x4 inputs and 3 classes keeps
// the hardening steps fast.
#include <ATen/ATen.h>

#include "moth.hpp"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

namespace {

int failures = 0;

void expect(bool cond, const std::string &what) {
    if (!cond) {
        std::cerr << "FAILED: " << what << "\n";
        ++failures;
    }
}

bool contains(const std::string &s, const std::string &part) {
    return s.find(part) != std::string::npos;
}

// Runs `f`, which must throw an exception whose message holds `part`.
template <typename F> void expect_throw(F &&f, const std::string &part, const std::string &what) {
    try {
        f();
        expect(false, what + ": did not throw");
    } catch (const std::exception &e) {
        expect(contains(e.what(), part), what + ": message '" + e.what() + "' lacks '" + part + "'");
    }
}

moth::Config small_config() {
    moth::Config c(R"({"seed": 7, "accuracy_every": 2, "period": 2, "portion": 0.5,
        "warmup": {"budget": {"steps": 3}, "pool_per_class": 2},
        "first": {"steps": 3}, "later": {"steps": 2}})");
    c.set("max_steps", uint64_t{6});
    return c;
}

// Logits of a fixed linear map: gradients flow to the input.
moth::Classifier linear_model(int *train_calls) {
    at::Tensor w = at::linspace(-1.0, 1.0, 48).reshape({16, 3});
    return moth::Classifier::from_forward(
        [w](const at::Tensor &x) { return x.flatten(1).matmul(w); },
        [train_calls](bool) { ++*train_calls; });
}

void config_set_takes_every_integer_type() {
    moth::Config c;
    c.set("max_steps", uint64_t{30});
    c.set("accuracy_every", 10u);
    c.set("pairs_per_step", size_t{2});
    c.set("seed", uint64_t{18446744073709551615ull});
    c.set("period", 3);
    c.set("warmup.pool_per_class", int64_t{5});
    c.set("portion", 0.25);
    c.set("method", "Moth"); // the C API takes the serde name here
    const std::string j = c.to_json();
    for (const char *part : {"\"max_steps\":30", "\"accuracy_every\":10", "\"pairs_per_step\":2",
                             "\"seed\":18446744073709551615", "\"period\":3", "\"portion\":0.25"})
        expect(contains(j, part), std::string("to_json has ") + part + ": " + j);
    std::cout << "ok config_set_takes_every_integer_type\n";
}

void moved_from_objects_say_so() {
    moth::Config c = small_config();
    moth::Session a(c, 3, 1, 4, 4);
    moth::Session b(std::move(a));
    expect(b.step() == 0, "the moved-to session works");
    expect_throw([&] { (void)a.step(); }, "moth::Session was moved from", "step on a moved-from session");
    expect_throw([&] { (void)a.to_bytes(); }, "was moved from", "to_bytes on a moved-from session");
    moth::Config d(std::move(c));
    expect_throw([&] { c.set("seed", 1); }, "moth::Config was moved from", "set on a moved-from config");
    std::cout << "ok moved_from_objects_say_so\n";
}

void an_undefined_forward_result_is_named() {
    auto model = moth::Classifier::from_forward([](const at::Tensor &) { return at::Tensor(); },
                                                nullptr);
    float pixels[16] = {0};
    auto x = moth::Tensor::from_buffer(pixels, MOTH_DTYPE_FLOAT32, {1, 1, 4, 4});
    expect_throw([&] { (void)model.forward(x); }, "undefined at::Tensor",
                 "forward returning an undefined tensor");
    std::cout << "ok an_undefined_forward_result_is_named\n";
}

void harden_says_why_there_is_no_batch() {
    int train_calls = 0;
    auto model = linear_model(&train_calls);
    moth::Session s(small_config(), 3, 1, 4, 4);
    at::manual_seed(1);
    auto xs = at::rand({6, 1, 4, 4});
    auto ys = at::arange(6, at::kLong).remainder(3);
    moth::Tensor x(xs), y(ys);
    int batches = 0, reports = 0;
    bool done = false;
    for (int i = 0; i < 100 && !done; ++i) {
        auto h = s.harden(model, x, y);
        switch (h.status()) {
        case moth::Hardened::Status::Batch:
            expect(h->shape() == std::vector<int64_t>({6, 1, 4, 4}), "stamped batch shape");
            ++batches;
            break;
        case moth::Hardened::Status::AccuracyWanted:
            expect(!h && h.accuracy_wanted() && s.wants_accuracy(), "accuracy wanted");
            expect_throw([&] { (void)h.batch(); }, "accuracy report is due", "batch() without one");
            (void)s.report_accuracy(0.9);
            ++reports;
            break;
        case moth::Hardened::Status::Done:
            expect(!h && h.done() && s.is_done(), "done");
            expect_throw([&] { (void)*h; }, "session is done", "*h when done");
            done = true;
            break;
        }
    }
    expect(done && batches == 6 && reports >= 2,
           "saw batches, reports and the end: " + std::to_string(batches) + " batches, " +
               std::to_string(reports) + " reports");
    std::cout << "ok harden_says_why_there_is_no_batch\n";
}

void new_wrappers_reach_the_c_api(const std::string &dir) {
    int train_calls = 0;
    auto model = linear_model(&train_calls);
    model.set_train(true);
    model.set_train(false);
    expect(train_calls == 2, "set_train reaches the callback");
    try {
        model.save(dir + "/callback.pt");
        expect(false, "saving a callback classifier throws");
    } catch (const moth::Error &e) {
        expect(e.status() == MOTH_STATUS_UNSUPPORTED, std::string("save: ") + e.what());
    }

    moth::Session s(small_config(), 3, 1, 4, 4);
    auto acc = s.accuracy();
    expect(!acc.has_baseline && acc.pending, "no baseline yet, one due");
    (void)s.report_accuracy(0.75);
    acc = s.accuracy();
    expect(acc.has_baseline && acc.baseline == 0.75 && !acc.pending, "baseline recorded");
    expect(contains(s.config_json(), "\"max_steps\":6"), "config_json: " + s.config_json());

    double values[4] = {1, 2, 3, 4};
    auto t = moth::Tensor::from_buffer(values, MOTH_DTYPE_FLOAT64, {2, 2});
    expect(t.dtype() == MOTH_DTYPE_FLOAT64, "dtype");
    expect(t.device().type == MOTH_DEVICE_TYPE_CPU && t.device().index == 0, "device");
    moth::Tensor u(at::zeros({3}, at::kLong));
    expect(u.dtype() == MOTH_DTYPE_INT64, "dtype of a wrapped at::Tensor");
    std::cout << "ok new_wrappers_reach_the_c_api\n";
}

} // namespace

int main(int argc, char **argv) {
    const std::string dir = argc > 1 ? argv[1] : ".";
    try {
        moth::check_abi();
        config_set_takes_every_integer_type();
        moved_from_objects_say_so();
        an_undefined_forward_result_is_named();
        harden_says_why_there_is_no_batch();
        new_wrappers_reach_the_c_api(dir);
    } catch (const std::exception &e) {
        std::cerr << "FAILED with an exception: " << e.what() << "\n";
        return 1;
    }
    return failures == 0 ? 0 : 1;
}
