// trainer.cpp: a libtorch C++ trainer that hardens its own model with moth.
//
// The trainer owns everything moth does not: a torch::nn CNN for 1x28x28
// Fashion-MNIST images, its SGD optimiser, data loading and the training
// loop. Each step it asks the moth session to harden the batch (through a
// forward callback wrapping its module, so gradients flow from the logits
// back to the input), trains on the stamped batch, reports clean accuracy
// when the session asks (restoring the last good weights if the drop is too
// large), and halfway checkpoints session + model + optimiser and resumes
// from the files.
//
// Built with MOTH_EXAMPLE_CUDA on a CUDA machine, it trains on a non-default
// CUDA stream of its own and puts moth on it too, in one of two ways:
//   --stream session  (default) hands the stream to the session
//                     (moth_session_set_cuda_stream); moth makes it current
//                     for each harden call and restores ours afterwards;
//   --stream current  makes the stream current for the whole run
//                     (CUDAStreamGuard); moth runs on the caller's current
//                     stream, so it needs no call at all.
// Either way the forward callback checks, on every forward pass moth makes,
// that the current stream is the trainer's, and the run fails otherwise.
//
// Built with MOTH_EXAMPLE_GLOO (and USE_C10D_GLOO, which libtorch's c10d
// headers want), it trains data-parallel: `--world-size N --rank R` joins a
// Gloo process group over a c10d FileStore (`--store FILE`, shared by the
// ranks); every rank takes its shard of each batch, averages the model's
// gradients over the group and hardens through the same group, given to
// its moth session as a collective hook (moth_session_set_collective), so
// that all ranks' sessions agree. `--break-collective K` makes this rank's
// hook skip its K-th all-reduce (to see that the ranks fail with clear
// errors instead of hanging); `--timeout-ms T` is the group's timeout.
//
// Build: see examples/README.md (pkg-config moth, or CMake).
// Run:   ./trainer [--data DIR] [--train N] [--test N] [--pretrain-epochs E]
//                  [--steps S] [--batch B] [--checkpoint PREFIX] [--cpu]
//                  [--stream session|current]
//                  [--world-size N --rank R --store FILE] [--timeout-ms T]
//                  [--break-collective K] [--weights PREFIX]
#include <torch/torch.h>

#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#ifdef MOTH_EXAMPLE_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#ifdef MOTH_EXAMPLE_GLOO
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include "moth.hpp"

namespace {

constexpr int64_t kSide = 28;
constexpr int64_t kClasses = 10;

// A small CNN; inputs are pixels in [0, 1], normalised inside the model
// (moth stamps triggers in pixel space).
struct NetImpl : torch::nn::Module {
    NetImpl()
        : conv1(register_module("conv1", torch::nn::Conv2d(
                                             torch::nn::Conv2dOptions(1, 16, 3).padding(1)))),
          conv2(register_module("conv2", torch::nn::Conv2d(
                                             torch::nn::Conv2dOptions(16, 32, 3).padding(1)))),
          fc1(register_module("fc1", torch::nn::Linear(32 * 7 * 7, 64))),
          fc2(register_module("fc2", torch::nn::Linear(64, kClasses))) {}

    torch::Tensor forward(torch::Tensor x) {
        x = (x - 0.2860) / 0.3530;
        x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
        x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
        x = torch::relu(fc1->forward(x.flatten(1)));
        return fc2->forward(x);
    }

    torch::nn::Conv2d conv1, conv2;
    torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Net);

struct Data {
    torch::Tensor images; // [n, 1, 28, 28] float in [0, 1]
    torch::Tensor labels; // [n] int64
};

uint32_t be32(const unsigned char *b) {
    return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
}

std::vector<unsigned char> read_gz(const std::string &path, size_t header, size_t bytes,
                                   uint32_t magic) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open " + path);
    std::vector<unsigned char> h(header), out(bytes);
    bool ok = gzread(f, h.data(), unsigned(header)) == int(header) && be32(h.data()) == magic &&
              gzread(f, out.data(), unsigned(bytes)) == int(bytes);
    gzclose(f);
    if (!ok) throw std::runtime_error(path + ": not the expected IDX file");
    return out;
}

// The first `n` samples of a Fashion-MNIST split ("train" or "t10k").
Data load(const std::string &dir, const std::string &split, int64_t n) {
    auto px = read_gz(dir + "/" + split + "-images-idx3-ubyte.gz", 16, size_t(n) * 784, 2051);
    auto lb = read_gz(dir + "/" + split + "-labels-idx1-ubyte.gz", 8, size_t(n), 2049);
    auto images = torch::from_blob(px.data(), {n, 1, kSide, kSide}, torch::kUInt8)
                      .to(torch::kFloat32)
                      .div_(255.0);
    auto labels = torch::from_blob(lb.data(), {n}, torch::kUInt8).to(torch::kInt64);
    return {images, labels};
}

double accuracy(Net &net, const Data &d, torch::Device device) {
    torch::NoGradGuard no_grad;
    net->eval();
    auto pred = net->forward(d.images.to(device)).argmax(1);
    return pred.eq(d.labels.to(device)).to(torch::kFloat64).mean().item<double>();
}

std::vector<torch::Tensor> snapshot(Net &net) {
    std::vector<torch::Tensor> s;
    for (auto &p : net->parameters()) s.push_back(p.detach().clone());
    for (auto &b : net->buffers()) s.push_back(b.detach().clone());
    return s;
}

void restore(Net &net, const std::vector<torch::Tensor> &s) {
    torch::NoGradGuard no_grad;
    size_t i = 0;
    for (auto &p : net->parameters()) p.copy_(s[i++]);
    for (auto &b : net->buffers()) b.copy_(s[i++]);
}

const char *phase_name(moth_phase_kind k) {
    switch (k) {
    case MOTH_PHASE_KIND_WARMUP: return "warmup";
    case MOTH_PHASE_KIND_ORTHOGONALIZE: return "orthogonalize";
    case MOTH_PHASE_KIND_UNIVERSAL: return "universal";
    case MOTH_PHASE_KIND_DONE: return "done";
    case MOTH_PHASE_KIND_RECOVER: return "recover";
    }
    return "?";
}

#ifdef MOTH_EXAMPLE_CUDA
using StreamScope = c10::cuda::OptionalCUDAStreamGuard;
#else
struct StreamScope {};
#endif

// The trainer's CUDA stream, and a tally of which stream moth's forward
// passes ran on. Without MOTH_EXAMPLE_CUDA, or on a CPU, it does nothing.
struct Streams {
#ifdef MOTH_EXAMPLE_CUDA
    std::optional<c10::cuda::CUDAStream> own;
    bool hand_to_moth = true;
    int64_t on = 0, off = 0;
#endif

    // Makes our stream current for the trainer's own work until the scope
    // is dropped. In --stream current mode it is current for the whole run
    // already, and on a CPU there is nothing to do: no scope.
    std::unique_ptr<StreamScope> scope() const {
#ifdef MOTH_EXAMPLE_CUDA
        if (own && hand_to_moth) return std::make_unique<StreamScope>(own->unwrap());
#endif
        return nullptr;
    }

    // Gives the session our stream (--stream session); again after a resume,
    // since checkpoints do not carry it.
    void hand_to(moth::Session &session) const {
#ifdef MOTH_EXAMPLE_CUDA
        if (own && hand_to_moth) session.set_cuda_stream(own->device_index(), own->stream());
#else
        (void)session;
#endif
    }

    // Called inside moth's forward passes.
    void note_forward() {
#ifdef MOTH_EXAMPLE_CUDA
        if (own) (c10::cuda::getCurrentCUDAStream(own->device_index()) == *own ? on : off)++;
#endif
    }

    // After a harden call in --stream session mode the caller's stream (the
    // default one, outside our scopes) must be current again.
    void check_restored() const {
#ifdef MOTH_EXAMPLE_CUDA
        if (own && hand_to_moth &&
            c10::cuda::getCurrentCUDAStream(own->device_index()) !=
                c10::cuda::getDefaultCUDAStream(own->device_index()))
            throw std::runtime_error("moth left its stream current after harden");
#endif
    }

    // Prints the tally; false when a forward pass ran elsewhere.
    bool report() const {
#ifdef MOTH_EXAMPLE_CUDA
        if (own) {
            std::cout << "stream check: " << on << " of " << (on + off)
                      << " moth forward passes ran on the trainer's stream " << *own << "\n";
            return off == 0 && on > 0;
        }
#endif
        return true;
    }
};

// This rank of a data-parallel run: its Gloo process group (none with one
// rank), and the collective hook moth hardens through.
struct Ranks {
    int rank = 0, world = 1;
    int64_t skip_at = 0;      // --break-collective: skip this all-reduce
    int64_t all_reduces = 0;  // all-reduces moth asked for
    int64_t broadcasts = 0;   // broadcasts moth asked for
    int64_t bytes = 0;        // bytes moth's collectives carried
#ifdef MOTH_EXAMPLE_GLOO
    c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
#endif

    void join(const std::string &store, int64_t timeout_ms) {
        if (world == 1) return;
#ifdef MOTH_EXAMPLE_GLOO
        auto files = c10::make_intrusive<c10d::FileStore>(store, world);
        auto opts = c10d::ProcessGroupGloo::Options::create();
        opts->timeout = std::chrono::milliseconds(timeout_ms);
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        group = c10::make_intrusive<c10d::ProcessGroupGloo>(files, rank, world, opts);
        std::cout << "rank " << rank << " of " << world << ": Gloo process group over " << store
                  << "\n";
#else
        (void)store;
        (void)timeout_ms;
        throw std::runtime_error("--world-size > 1 needs a build with MOTH_EXAMPLE_GLOO");
#endif
    }

    // Sums `t` (a CPU tensor) over the ranks, in place.
    void all_reduce(at::Tensor &t) {
#ifdef MOTH_EXAMPLE_GLOO
        std::vector<at::Tensor> ts{t};
        group->allreduce(ts)->wait();
#else
        (void)t;
#endif
    }

    // Rank 0's `t` on every rank.
    void broadcast(at::Tensor &t) {
#ifdef MOTH_EXAMPLE_GLOO
        std::vector<at::Tensor> ts{t};
        group->broadcast(ts)->wait();
#else
        (void)t;
#endif
    }

    // What DDP does after backward: every gradient averaged over the ranks
    // (one flat buffer, one all-reduce).
    void average_gradients(Net &net) {
        if (world == 1) return;
        std::vector<at::Tensor> grads;
        for (auto &p : net->parameters()) grads.push_back(p.grad().flatten());
        auto flat = torch::cat(grads);
        all_reduce(flat);
        flat.div_(world);
        int64_t at = 0;
        for (auto &p : net->parameters()) {
            auto n = p.numel();
            p.grad().copy_(flat.narrow(0, at, n).view_as(p.grad()));
            at += n;
        }
    }

    // What DDP does at construction: rank 0's weights on every rank.
    void share_weights(Net &net) {
        if (world == 1) return;
        torch::NoGradGuard no_grad;
        for (auto &p : net->parameters()) {
            auto t = p.detach().contiguous();
            broadcast(t);
            p.copy_(t);
        }
    }

    // The hook moth calls: the same process group. A failure (Gloo's
    // timeout, a lost peer) is printed and returned as a non-zero status;
    // no exception crosses into moth.
    static int32_t all_reduce_cb(float *values, size_t count, void *user) {
        auto *r = static_cast<Ranks *>(user);
        try {
            if (++r->all_reduces == r->skip_at) return 0; // deliberately broken
            auto t = torch::from_blob(values, {int64_t(count)}, torch::kFloat32);
            r->all_reduce(t);
            r->bytes += int64_t(count * sizeof(float));
            return 0;
        } catch (const std::exception &e) {
            std::cerr << "rank " << r->rank << ": all-reduce failed: " << e.what() << "\n";
            return 1;
        }
    }

    static int32_t broadcast_cb(uint8_t *bytes, size_t len, void *user) {
        auto *r = static_cast<Ranks *>(user);
        try {
            r->broadcasts++;
            auto t = torch::from_blob(bytes, {int64_t(len)}, torch::kUInt8);
            r->broadcast(t);
            r->bytes += int64_t(len);
            return 0;
        } catch (const std::exception &e) {
            std::cerr << "rank " << r->rank << ": broadcast failed: " << e.what() << "\n";
            return 1;
        }
    }

    // Gives the session the hook (again after a resume: checkpoints do not
    // carry it). The Ranks object outlives the session, so no free function.
    void hand_to(moth::Session &session) {
        if (world == 1) return;
        moth_collective c{};
        c.rank = rank;
        c.world_size = world;
        c.all_reduce_sum = &Ranks::all_reduce_cb;
        c.broadcast = &Ranks::broadcast_cb;
        c.user_data = this;
        c.free_user_data = nullptr;
        session.set_collective(&c);
    }

    // This rank's shard of a batch of indices: every world-th one.
    torch::Tensor shard(const torch::Tensor &idx) const {
        if (world == 1) return idx;
        return idx.slice(0, rank, idx.size(0), world);
    }
};

// The model's parameters as raw float32 values, in registration order.
void write_weights(Net &net, const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    for (auto &p : net->parameters()) {
        auto t = p.detach().to(torch::kCPU).contiguous();
        std::fwrite(t.data_ptr<float>(), sizeof(float), size_t(t.numel()), f);
    }
    if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path);
}

} // namespace

int main(int argc, char **argv) try {
    std::string dir = "/usr/share/datasets/fashion-mnist", prefix = "trainer-ckpt";
    int64_t n_train = 2000, n_test = 500, batch = 64, pretrain_epochs = 2, steps = 16;
    bool force_cpu = false;
    std::string stream_mode = "session";
    Ranks ranks;
    std::string store = "trainer-store", weights;
    int64_t timeout_ms = 30000;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
            return argv[++i];
        };
        if (a == "--data") dir = next();
        else if (a == "--train") n_train = std::stoll(next());
        else if (a == "--test") n_test = std::stoll(next());
        else if (a == "--batch") batch = std::stoll(next());
        else if (a == "--pretrain-epochs") pretrain_epochs = std::stoll(next());
        else if (a == "--steps") steps = std::stoll(next());
        else if (a == "--checkpoint") prefix = next();
        else if (a == "--cpu") force_cpu = true;
        else if (a == "--stream") stream_mode = next();
        else if (a == "--world-size") ranks.world = std::stoi(next());
        else if (a == "--rank") ranks.rank = std::stoi(next());
        else if (a == "--store") store = next();
        else if (a == "--timeout-ms") timeout_ms = std::stoll(next());
        else if (a == "--break-collective") ranks.skip_at = std::stoll(next());
        else if (a == "--weights") weights = next();
        else throw std::runtime_error("unknown argument " + a);
    }

    moth::check_abi();
    std::cout << "moth " << moth::version() << ", libtorch " << TORCH_VERSION << "\n";
    torch::manual_seed(0);

    if (stream_mode != "session" && stream_mode != "current")
        throw std::runtime_error("--stream must be session or current");
    if (ranks.world < 1 || ranks.rank < 0 || ranks.rank >= ranks.world)
        throw std::runtime_error("--rank must be in [0, --world-size)");
    if (batch % ranks.world != 0)
        throw std::runtime_error("--batch must be a multiple of --world-size");
    ranks.join(store, timeout_ms);
    torch::Device device(torch::kCPU);
    moth_device mdev = moth::cpu();
    Streams streams;
#ifdef MOTH_EXAMPLE_CUDA
    // --stream current: lives until main returns, so every kernel below,
    // ours and moth's (moth runs libtorch on this thread), is queued on it.
    c10::cuda::OptionalCUDAStreamGuard whole_run;
    if (!force_cpu && torch::cuda::is_available()) {
        device = torch::Device(torch::kCUDA, 0);
        mdev = moth::cuda(0);
        streams.own = c10::cuda::getStreamFromPool(false, 0);
        streams.hand_to_moth = stream_mode == "session";
        if (!streams.hand_to_moth) whole_run.reset_stream(*streams.own);
        std::cout << "CUDA: trainer stream " << *streams.own << " (default "
                  << c10::cuda::getDefaultCUDAStream(0) << "), given to moth "
                  << (streams.hand_to_moth ? "with moth_session_set_cuda_stream"
                                           : "as the thread's current stream")
                  << "\n";
    }
#else
    (void)force_cpu;
#endif
    std::cout << "device " << device << "\n";

    Data train = load(dir, "train", n_train), test = load(dir, "t10k", n_test);
    Net net;
    auto setup_scope = streams.scope();
    net->to(device);

    // Plain pre-training so that the model has something to harden.
    {
        torch::optim::Adam pre(net->parameters(), torch::optim::AdamOptions(1e-3));
        for (int64_t e = 0; e < pretrain_epochs; e++) {
            net->train();
            auto perm = torch::randperm(n_train);
            for (int64_t s = 0; s + batch <= n_train; s += batch) {
                auto idx = perm.narrow(0, s, batch);
                auto x = train.images.index_select(0, idx).to(device);
                auto y = train.labels.index_select(0, idx).to(device);
                pre.zero_grad();
                torch::nn::functional::cross_entropy(net->forward(x), y).backward();
                pre.step();
            }
            std::cout << "pretrain epoch " << e << ": test accuracy " << accuracy(net, test, device)
                      << "\n";
        }
    }
    ranks.share_weights(net);
    if (!weights.empty()) write_weights(net, weights + ".before");

    // moth sees the model through a forward callback: our module, unchanged.
    auto classifier = moth::Classifier::from_forward(
        [&net, &streams](const at::Tensor &x) {
            streams.note_forward();
            return net->forward(x);
        },
        [&net](bool train) { net->train(train); }, mdev);

    moth::Config config(R"({"seed": 7, "accuracy_every": 4, "period": 2, "portion": 0.5,
        "warmup": {"budget": {"steps": 6}, "pool_per_class": 4},
        "first": {"steps": 6}, "later": {"steps": 3}, "max_accuracy_drop": 0.05})");
    config.set("max_steps", steps);
    auto session = std::make_unique<moth::Session>(config, kClasses, 1, kSide, kSide);
    session->set_log([](moth_log_level level, const char *m) {
        if (level <= MOTH_LOG_LEVEL_WARN) std::cerr << "[moth] " << m << "\n";
    });
    streams.hand_to(*session);
    ranks.hand_to(*session);

    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(1e-3).momentum(0.9));
    auto good = snapshot(net);
    auto perm = torch::randperm(n_train);
    int64_t offset = 0;
    bool resumed = false;
    auto t0 = std::chrono::steady_clock::now();
    // From here the trainer's own work opens its stream scope where it needs
    // one, so that moth's calls run outside them.
    setup_scope.reset();

    while (true) {
        if (session->wants_accuracy()) {
            auto scope = streams.scope();
            double acc = accuracy(net, test, device);
            auto [verdict, drop] = session->report_accuracy(acc);
            std::cout << "accuracy " << acc << " verdict " << verdict << " drop " << drop << "\n";
            if (verdict == MOTH_VERDICT_EXCEEDED) {
                restore(net, good); // back to the last model within the bound
                std::cout << "accuracy bound exceeded: restored the last good model\n";
            } else if (verdict != MOTH_VERDICT_RECOVERING) {
                good = snapshot(net); // recovering: keep training, not a good model
            }
        }
        if (offset + batch > n_train) {
            perm = torch::randperm(n_train);
            offset = 0;
        }
        // Every rank draws the same permutation (same seed); each takes its shard.
        auto idx = ranks.shard(perm.narrow(0, offset, batch));
        offset += batch;
        torch::Tensor x, y;
        {
            auto scope = streams.scope(); // the batch is made on our stream
            x = train.images.index_select(0, idx).to(device);
            y = train.labels.index_select(0, idx).to(device);
        }

        auto stamped = session->harden(classifier, moth::Tensor(x), moth::Tensor(y));
        streams.check_restored();
        if (stamped.done()) break;
        if (stamped.accuracy_wanted()) continue; // handled at the loop's top
        auto xs = stamped->to_at();

        auto scope = streams.scope(); // moth produced xs on our stream too
        net->train();
        opt.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(net->forward(xs), y);
        loss.backward();
        ranks.average_gradients(net);
        opt.step();

        auto r = session->last_report();
        std::cout << "step " << r.step << " " << phase_name(r.phase.kind);
        if (r.phase.kind == MOTH_PHASE_KIND_ORTHOGONALIZE)
            std::cout << " pair " << r.phase.source << "<->" << r.phase.target;
        else
            std::cout << " target " << r.phase.target;
        for (size_t d = 0; d < r.num_directions; d++)
            std::cout << " | " << r.directions[d].victim << "->" << r.directions[d].target
                      << " size " << r.directions[d].size
                      << (r.directions[d].reached ? " reached" : " failed") << " stamped "
                      << r.directions[d].stamped;
        std::cout << " | loss " << loss.item<double>() << "\n";
        // What every rank must agree on (stamped counts and losses are each
        // rank's own), and what moth's collectives cost so far.
        std::cout << "agreed step " << r.step << " " << phase_name(r.phase.kind) << " "
                  << r.phase.source << "<->" << r.phase.target << " " << r.phase.target;
        for (size_t d = 0; d < r.num_directions; d++)
            std::cout << " | " << r.directions[d].victim << "->" << r.directions[d].target
                      << " size " << r.directions[d].size << " " << r.directions[d].reached;
        std::cout << "\n";
        if (ranks.world > 1)
            std::cout << "collectives after step " << r.step << ": " << ranks.all_reduces
                      << " all-reduces, " << ranks.broadcasts << " broadcasts, " << ranks.bytes
                      << " bytes\n";

        // Halfway: checkpoint session, model and optimiser at the same step,
        // then resume from the files as a restarted process would.
        if (!resumed && int64_t(r.step) + 1 == steps / 2) {
            session->save(prefix + ".session");
            torch::save(net, prefix + ".model.pt");
            torch::save(opt, prefix + ".optim.pt");
            uint64_t at = session->step();
            session.reset();
            session = std::make_unique<moth::Session>(
                moth::Session::load(prefix + ".session", kClasses, 1, kSide, kSide));
            torch::load(net, prefix + ".model.pt");
            torch::load(opt, prefix + ".optim.pt");
            net->to(device);
            streams.hand_to(*session);
            ranks.hand_to(*session);
            std::cout << "checkpoint: saved at step " << at << ", resumed at step "
                      << session->step() << "\n";
            resumed = true;
        }
    }

    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto scope = streams.scope();
    auto count = session->matrix(MOTH_MATRIX_COUNT);
    double pairs = 0;
    for (double c : count) pairs += c;
    std::cout << "session done at step " << session->step() << " (" << secs << " s), "
              << pairs / 2 << " pairs chosen, final test accuracy "
              << accuracy(net, test, device) << "\n";
    if (!streams.report()) return 1;
    if (!weights.empty()) {
        write_weights(net, weights + ".after");
        session->save(weights + ".session");
    }
    std::cout << "ok\n";
    return 0;
} catch (const moth::Error &e) {
    std::cerr << "moth error: " << e.what() << "\n";
    return 1;
} catch (const std::exception &e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
}
