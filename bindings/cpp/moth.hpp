// moth.hpp: header-only C++17 RAII wrapper over the moth C API (moth.h).
//
// Owning, move-only classes (Config, Tensor, Classifier, Session, and in
// moth_distance.hpp and moth_trainer.hpp DistanceConfig, Distances and
// Trainer); every
// failing call throws moth::Error carrying the status and moth's message,
// as does any call on an object that was moved from. Flow signals are not
// errors: Session::harden returns a moth::Hardened that holds the stamped
// batch, or says that the session is done or waits for an accuracy report.
//
// When libtorch's headers are reachable (<ATen/core/Tensor.h>), the wrapper
// also converts moth tensors to and from at::Tensor without copying and
// builds a Classifier from any forward function (a torch::nn::Module's).
// Define MOTH_HPP_NO_TORCH to leave that part out.
#ifndef MOTH_HPP
#define MOTH_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moth.h"

#if !defined(MOTH_HPP_NO_TORCH) && defined(__has_include)
#if __has_include(<ATen/core/Tensor.h>)
#include <ATen/core/Tensor.h>
#define MOTH_HPP_HAS_TORCH 1
#endif
#endif

namespace moth {

/// Discards a status on purpose (GCC's warn_unused_result ignores (void) casts).
inline void ignore_status(moth_status) noexcept {}

/// A failed moth call: the status and moth's message.
class Error : public std::runtime_error {
  public:
    Error(moth_status status, const std::string &message)
        : std::runtime_error(std::string(moth_status_name(status)) + ": " + message),
          status_(status) {}
    /// The status the C call returned.
    moth_status status() const noexcept { return status_; }

  private:
    moth_status status_;
};

namespace detail {
/// Reads a string through one of moth's (buf, len, needed) getters.
template <typename F> std::string read_string(F &&get) {
    size_t needed = 0;
    moth_status st = get(nullptr, 0, &needed);
    if (st != MOTH_STATUS_OK && st != MOTH_STATUS_BUFFER_TOO_SMALL) return {};
    std::string s(needed, '\0');
    if (needed == 0 || get(s.data(), s.size(), &needed) != MOTH_STATUS_OK) return {};
    s.resize(needed - 1);
    return s;
}

inline std::string thread_error() {
    return read_string([](char *b, size_t l, size_t *n) { return moth_last_error(b, l, n); });
}

inline std::string session_error(const moth_session *s) {
    return read_string(
        [s](char *b, size_t l, size_t *n) { return moth_session_last_error(s, b, l, n); });
}

/// The handle of a wrapper object, or a clear error when the object was
/// moved from (the C call would only report a null pointer, with no text).
template <typename T> T *live(T *raw, const char *what) {
    if (raw == nullptr)
        throw std::invalid_argument(std::string("moth: this moth::") + what +
                                    " was moved from and holds no " + what);
    return raw;
}
} // namespace detail

/// Throws moth::Error unless `st` is MOTH_STATUS_OK (message from this thread).
inline void check(moth_status st) {
    if (st != MOTH_STATUS_OK) throw Error(st, detail::thread_error());
}

/// Throws moth::Error unless `st` is MOTH_STATUS_OK (message from the session).
inline void check(moth_status st, const moth_session *s) {
    if (st != MOTH_STATUS_OK) throw Error(st, detail::session_error(s));
}

/// Library version at run time ("MAJOR.MINOR.PATCH").
inline std::string version() { return moth_version(); }

/// Throws unless the loaded library has the ABI this header describes.
inline void check_abi() {
    if (moth_abi_version() != MOTH_ABI_VERSION)
        throw Error(MOTH_STATUS_UNSUPPORTED,
                    "libmoth ABI " + std::to_string(moth_abi_version()) +
                        " does not match the header's " + std::to_string(MOTH_ABI_VERSION));
}

/// The CPU, or CUDA device `index`.
inline moth_device cpu() { return moth_device{MOTH_DEVICE_TYPE_CPU, 0}; }
inline moth_device cuda(int32_t index = 0) { return moth_device{MOTH_DEVICE_TYPE_CUDA, index}; }

/// A session configuration (defaults, then typed setters or JSON).
class Config {
  public:
    Config() { check(moth_config_new(&raw_)); }
    /// Parses `json` and merges it into the defaults.
    explicit Config(const std::string &json) : Config() { set_json(json); }
    Config(Config &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    Config &operator=(Config &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    Config(const Config &) = delete;
    Config &operator=(const Config &) = delete;
    ~Config() { moth_config_free(raw_); }

    Config &set_json(const std::string &json) {
        check(moth_config_set_json(live(), json.c_str()));
        return *this;
    }
    /// Any integer type: signed ones through moth_config_set_int, unsigned
    /// ones (uint64_t, size_t, 10u) through moth_config_set_uint, so that
    /// no value is narrowed and no call is ambiguous.
    template <typename T,
              std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
    Config &set(const std::string &key, T v) {
        if constexpr (std::is_signed_v<T>)
            check(moth_config_set_int(live(), key.c_str(), static_cast<int64_t>(v)));
        else
            check(moth_config_set_uint(live(), key.c_str(), static_cast<uint64_t>(v)));
        return *this;
    }
    Config &set(const std::string &key, double v) {
        check(moth_config_set_double(live(), key.c_str(), v));
        return *this;
    }
    Config &set(const std::string &key, const std::string &v) {
        check(moth_config_set_string(live(), key.c_str(), v.c_str()));
        return *this;
    }
    Config &set(const std::string &key, const char *v) { return set(key, std::string(v)); }
    /// No setting is a bool: refused at compile time rather than sent as 1.0.
    Config &set(const std::string &key, bool v) = delete;
    /// Every setting, defaults included, as JSON.
    std::string to_json() const {
        const moth_config *c = live();
        auto s = detail::read_string(
            [c](char *b, size_t l, size_t *n) { return moth_config_to_json(c, b, l, n); });
        return s;
    }
    const moth_config *get() const noexcept { return raw_; }

  private:
    moth_config *live() const { return detail::live(raw_, "Config"); }

    moth_config *raw_ = nullptr;
};

/// An owned moth tensor handle.
class Tensor {
  public:
    Tensor() = default;
    /// Takes ownership of a handle.
    explicit Tensor(moth_tensor *raw) noexcept : raw_(raw) {}
    Tensor(Tensor &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    Tensor &operator=(Tensor &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    Tensor(const Tensor &) = delete;
    Tensor &operator=(const Tensor &) = delete;
    ~Tensor() { moth_tensor_free(raw_); }

    /// Copies host memory (C order) into a new tensor.
    static Tensor from_buffer(const void *data, moth_dtype dtype, const std::vector<int64_t> &shape,
                              moth_device device = cpu()) {
        moth_tensor *t = nullptr;
        check(moth_tensor_from_buffer(data, dtype, shape.data(), shape.size(), device, &t));
        return Tensor(t);
    }

    std::vector<int64_t> shape() const {
        size_t nd = 0;
        moth_status st = moth_tensor_shape(live(), nullptr, 0, &nd);
        if (st != MOTH_STATUS_OK && st != MOTH_STATUS_BUFFER_TOO_SMALL) check(st);
        std::vector<int64_t> s(nd);
        check(moth_tensor_shape(raw_, s.data(), s.size(), &nd));
        return s;
    }

    /// The element type (a MOTH_DTYPE_* value).
    moth_dtype dtype() const {
        moth_dtype d = MOTH_DTYPE_FLOAT32;
        check(moth_tensor_dtype(live(), &d));
        return d;
    }

    /// The device the elements live on.
    moth_device device() const {
        moth_device d = cpu();
        check(moth_tensor_device(live(), &d));
        return d;
    }

    /// Copies the elements into host memory of `bytes` bytes.
    void copy_to(void *out, size_t bytes) const {
        check(moth_tensor_copy_to_buffer(live(), out, bytes));
    }

#ifdef MOTH_HPP_HAS_TORCH
    /// Wraps an at::Tensor without copying (shares storage and autograd).
    explicit Tensor(const at::Tensor &t) {
        check(moth_tensor_from_at_tensor(const_cast<at::Tensor *>(&t), &raw_));
    }
    /// The at::Tensor inside (a new reference, no copy).
    at::Tensor to_at() const {
        void *p = nullptr;
        check(moth_tensor_to_at_tensor(live(), &p));
        return *static_cast<at::Tensor *>(p);
    }
#endif

    moth_tensor *get() const noexcept { return raw_; }
    explicit operator bool() const noexcept { return raw_ != nullptr; }

  private:
    moth_tensor *live() const { return detail::live(raw_, "Tensor"); }

    moth_tensor *raw_ = nullptr;
};

/// The model a session hardens: a TorchScript file, or the caller's own
/// forward function.
class Classifier {
  public:
    Classifier(Classifier &&o) noexcept : raw_(std::exchange(o.raw_, nullptr)) {}
    Classifier &operator=(Classifier &&o) noexcept {
        std::swap(raw_, o.raw_);
        return *this;
    }
    Classifier(const Classifier &) = delete;
    Classifier &operator=(const Classifier &) = delete;
    ~Classifier() { moth_classifier_free(raw_); }

    /// Loads a TorchScript module taking [n, c, h, w] pixels in [0, 1].
    static Classifier from_torchscript(const std::string &path, int64_t c, int64_t h, int64_t w,
                                       moth_device device = cpu()) {
        moth_classifier *raw = nullptr;
        check(moth_classifier_from_torchscript(path.c_str(), c, h, w, device, &raw));
        return Classifier(raw);
    }

#ifdef MOTH_HPP_HAS_TORCH
    using Forward = std::function<at::Tensor(const at::Tensor &)>;
    using SetTrain = std::function<void(bool)>;

    /// A classifier calling `forward` (logits with gradients flowing to the
    /// input) and `set_train` (may be empty). Exceptions they throw become
    /// MOTH_STATUS_CALLBACK with the exception's message.
    static Classifier from_forward(Forward forward, SetTrain set_train,
                                   moth_device device = cpu()) {
        auto *cb = new Callbacks{std::move(forward), std::move(set_train)};
        moth_classifier *raw = nullptr;
        moth_status st = moth_classifier_from_callback(
            &Classifier::forward_trampoline,
            cb->set_train ? &Classifier::set_train_trampoline : nullptr, cb,
            &Classifier::free_callbacks, device, &raw);
        if (st != MOTH_STATUS_OK) {
            delete cb; // not taken over on failure
            check(st);
        }
        return Classifier(raw);
    }
#endif

    /// The shape {n, c, h, w} of a batch handed to a host callback.
    using Shape = std::array<size_t, 4>;
    /// Writes the logits [n, classes] (row-major) of the n inputs at `x`
    /// (NCHW, row-major, in [0, 1]) into `logits`.
    using HostForward = std::function<void(const float *x, const Shape &shape, float *logits)>;
    /// Writes dL/dx = J(x)^T grad_logits (the layout of `x`) into `grad_x`.
    using HostInputGrad = std::function<void(const float *x, const Shape &shape,
                                             const float *grad_logits, float *grad_x)>;

    /// A classifier from any framework, on host buffers: `forward` computes
    /// logits, `input_grad` the vector-Jacobian product (moth computes the
    /// gradient with respect to the logits and carries the input gradient
    /// on to its triggers). Buffers are moth's, valid during the call.
    /// Exceptions they throw become MOTH_STATUS_CALLBACK with the message.
    static Classifier from_host(HostForward forward, HostInputGrad input_grad,
                                size_t num_classes) {
        auto *cb = new HostCallbacks{std::move(forward), std::move(input_grad)};
        moth_classifier *raw = nullptr;
        moth_status st = moth_classifier_from_host(&Classifier::host_forward,
                                                   &Classifier::host_input_grad, nullptr, cb,
                                                   &Classifier::free_host, num_classes, &raw);
        if (st != MOTH_STATUS_OK) {
            delete cb; // not taken over on failure
            check(st);
        }
        return Classifier(raw);
    }

    /// Logits for `x` without gradients.
    Tensor forward(const Tensor &x) {
        moth_tensor *out = nullptr;
        check(moth_classifier_forward(live(), x.get(), &out));
        return Tensor(out);
    }

    /// Switches between training and evaluation mode (the set_train
    /// function, or a TorchScript module's mode).
    void set_train(bool train) { check(moth_classifier_set_train(live(), train)); }

    /// Saves a TorchScript classifier to `path` (loadable with
    /// torch.jit.load); a classifier made from a forward function throws
    /// with MOTH_STATUS_UNSUPPORTED (its model is the caller's to save).
    void save(const std::string &path) { check(moth_classifier_save(live(), path.c_str())); }

    moth_classifier *get() const noexcept { return raw_; }

  private:
    explicit Classifier(moth_classifier *raw) noexcept : raw_(raw) {}

    moth_classifier *live() const { return detail::live(raw_, "Classifier"); }

    struct HostCallbacks {
        HostForward forward;
        HostInputGrad input_grad;
    };

    /// Runs `f`, turning an exception into a callback failure.
    template <typename F> static int32_t guarded(F &&f) noexcept {
        try {
            f();
            return 0;
        } catch (const std::exception &e) {
            ignore_status(moth_callback_set_error(e.what()));
        } catch (...) {
            ignore_status(moth_callback_set_error("unknown C++ exception"));
        }
        return -1;
    }

    static int32_t host_forward(void *user, const float *x, size_t n, size_t c, size_t h,
                                size_t w, float *logits, size_t) noexcept {
        return guarded([&] { static_cast<HostCallbacks *>(user)->forward(x, {n, c, h, w}, logits); });
    }

    static int32_t host_input_grad(void *user, const float *x, size_t n, size_t c, size_t h,
                                   size_t w, const float *g, size_t, float *gx) noexcept {
        return guarded(
            [&] { static_cast<HostCallbacks *>(user)->input_grad(x, {n, c, h, w}, g, gx); });
    }

    static void free_host(void *user) noexcept { delete static_cast<HostCallbacks *>(user); }

#ifdef MOTH_HPP_HAS_TORCH
    struct Callbacks {
        Forward forward;
        SetTrain set_train;
    };

    static int32_t forward_trampoline(void *user, const moth_tensor *input,
                                       moth_tensor **logits_out) noexcept {
        try {
            void *p = nullptr;
            moth_status st = moth_tensor_to_at_tensor(input, &p);
            if (st != MOTH_STATUS_OK) return st;
            at::Tensor logits = static_cast<Callbacks *>(user)->forward(
                *static_cast<const at::Tensor *>(p));
            // Said here: moth would only see a bad argument and a status.
            if (!logits.defined())
                throw std::invalid_argument(
                    "the forward function returned an undefined at::Tensor (no logits)");
            moth_status out = moth_tensor_from_at_tensor(&logits, logits_out);
            if (out != MOTH_STATUS_OK)
                throw std::invalid_argument("the logits the forward function returned were "
                                            "refused: " + detail::thread_error());
            return MOTH_STATUS_OK;
        } catch (const std::exception &e) {
            ignore_status(moth_callback_set_error(e.what()));
        } catch (...) {
            ignore_status(moth_callback_set_error("unknown C++ exception"));
        }
        return -1;
    }

    static int32_t set_train_trampoline(void *user, bool train) noexcept {
        try {
            static_cast<Callbacks *>(user)->set_train(train);
            return 0;
        } catch (const std::exception &e) {
            ignore_status(moth_callback_set_error(e.what()));
        } catch (...) {
            ignore_status(moth_callback_set_error("unknown C++ exception"));
        }
        return -1;
    }

    static void free_callbacks(void *user) noexcept { delete static_cast<Callbacks *>(user); }
#endif

    moth_classifier *raw_ = nullptr;
};

/// What Session::harden gives back: the stamped batch to train on, or the
/// reason there is none (the session is done, or an accuracy report is due).
/// Tests true when it holds a batch; `*h` and `h->` reach the batch.
class Hardened {
  public:
    enum class Status { Batch, Done, AccuracyWanted };

    explicit Hardened(Tensor batch) noexcept : status_(Status::Batch), batch_(std::move(batch)) {}
    explicit Hardened(Status why) noexcept : status_(why) {}

    Status status() const noexcept { return status_; }
    bool has_batch() const noexcept { return status_ == Status::Batch; }
    /// The session finished: stop training.
    bool done() const noexcept { return status_ == Status::Done; }
    /// Report clean accuracy (Session::report_accuracy), then call harden again.
    bool accuracy_wanted() const noexcept { return status_ == Status::AccuracyWanted; }
    explicit operator bool() const noexcept { return has_batch(); }

    /// The stamped batch; throws when there is none.
    Tensor &batch() {
        if (!has_batch())
            throw std::logic_error(done() ? "moth: the session is done: no batch to train on"
                                          : "moth: an accuracy report is due: no batch to "
                                            "train on");
        return batch_;
    }
    Tensor &operator*() { return batch(); }
    Tensor *operator->() { return &batch(); }

  private:
    Status status_;
    Tensor batch_;
};

/// A hardening session.
class Session {
  public:
    Session(const Config &config, size_t num_classes, int64_t c, int64_t h, int64_t w) {
        check(moth_session_new(config.get(), num_classes, c, h, w, &raw_));
    }
    Session(Session &&o) noexcept
        : raw_(std::exchange(o.raw_, nullptr)), log_(std::move(o.log_)) {}
    Session &operator=(Session &&o) noexcept {
        std::swap(raw_, o.raw_);
        std::swap(log_, o.log_);
        return *this;
    }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    ~Session() { moth_session_free(raw_); }

    /// Loads a checkpoint made for `num_classes` classes and [c, h, w] inputs.
    static Session load(const std::string &path, size_t num_classes, int64_t c, int64_t h,
                        int64_t w) {
        moth_session *raw = nullptr;
        check(moth_session_load(path.c_str(), num_classes, c, h, w, &raw));
        return Session(raw);
    }
    /// Restores a session from bytes made by to_bytes().
    static Session from_bytes(const std::vector<uint8_t> &bytes, size_t num_classes, int64_t c,
                              int64_t h, int64_t w) {
        moth_session *raw = nullptr;
        check(moth_session_from_buffer(bytes.data(), bytes.size(), num_classes, c, h, w, &raw));
        return Session(raw);
    }

    /// One hardening step: the stamped batch to train on, or no batch
    /// because the session is done or waits for an accuracy report (the
    /// result says which).
    Hardened harden(Classifier &model, const Tensor &x, const Tensor &y) {
        moth_tensor *out = nullptr;
        moth_status st = moth_session_harden_batch(live(), model.get(), x.get(), y.get(), &out);
        if (st == MOTH_STATUS_DONE) return Hardened(Hardened::Status::Done);
        if (st == MOTH_STATUS_ACCURACY_WANTED) return Hardened(Hardened::Status::AccuracyWanted);
        check(st, raw_);
        return Hardened(Tensor(out));
    }

    moth_step_report last_report() const {
        moth_step_report r;
        check(moth_session_last_report(live(), &r), raw_);
        return r;
    }
    bool wants_accuracy() const {
        bool b = false;
        check(moth_session_wants_accuracy(live(), &b), raw_);
        return b;
    }
    /// Reports clean accuracy; returns the verdict and the drop from the baseline.
    std::pair<moth_verdict, double> report_accuracy(double accuracy) {
        moth_verdict v = MOTH_VERDICT_NONE;
        double drop = 0;
        check(moth_session_report_accuracy(live(), accuracy, &v, &drop), raw_);
        return {v, drop};
    }
    moth_phase phase() const {
        moth_phase p;
        check(moth_session_phase(live(), &p), raw_);
        return p;
    }
    uint64_t step() const {
        uint64_t s = 0;
        check(moth_session_step(live(), &s), raw_);
        return s;
    }
    bool is_done() const {
        bool b = false;
        check(moth_session_is_done(live(), &b), raw_);
        return b;
    }
    /// The accuracy bookkeeping: baseline, last report, whether one is due.
    moth_accuracy accuracy() const {
        moth_accuracy a{};
        check(moth_session_accuracy(live(), &a), raw_);
        return a;
    }
    /// The session's configuration as JSON (the Config::to_json form).
    std::string config_json() const {
        const moth_session *s = live();
        return detail::read_string(
            [s](char *b, size_t l, size_t *n) { return moth_session_config_json(s, b, l, n); });
    }
    moth_spec spec() const {
        moth_spec s;
        check(moth_session_spec(live(), &s), raw_);
        return s;
    }
    /// One N x N scheduler matrix, row-major.
    std::vector<double> matrix(moth_matrix_kind which) const {
        size_t n = spec().num_classes;
        std::vector<double> m(n * n);
        check(moth_session_matrix(live(), which, m.data(), m.size()), raw_);
        return m;
    }
    void save(const std::string &path) const { check(moth_session_save(live(), path.c_str()), raw_); }
    std::vector<uint8_t> to_bytes() const {
        moth_buffer *b = nullptr;
        check(moth_session_to_buffer(live(), &b), raw_);
        std::unique_ptr<moth_buffer, void (*)(moth_buffer *)> owned(b, moth_buffer_free);
        const uint8_t *data = nullptr;
        size_t len = 0;
        check(moth_buffer_data(b, &data, &len));
        return std::vector<uint8_t>(data, data + len);
    }
    /// Message of the last failed call on this session.
    std::string last_error() const { return detail::session_error(raw_); }

    /// Runs each `harden` call on `stream` (a cudaStream_t, e.g.
    /// `c10::cuda::CUDAStream::stream()`) of CUDA device `device`, restoring
    /// the caller's current stream afterwards; `stream == nullptr` clears it.
    /// Throws with MOTH_STATUS_UNSUPPORTED in a process without CUDA. Not
    /// saved in checkpoints: set it again after loading a session.
    void set_cuda_stream(int32_t device, void *stream) {
        check(moth_session_set_cuda_stream(live(), device, stream), raw_);
    }
    /// Makes the session one rank of a data-parallel run through the
    /// trainer's collective (nullptr: a single process again); see
    /// moth_session_set_collective. The struct is copied; moth owns its
    /// user_data from this call on.
    void set_collective(const moth_collective *collective) {
        check(moth_session_set_collective(live(), collective), raw_);
    }
    /// The stream set with set_cuda_stream: {device, cudaStream_t}, or
    /// {-1, nullptr} when none is set.
    std::pair<int32_t, void *> cuda_stream() const {
        int32_t device = -1;
        void *stream = nullptr;
        check(moth_session_cuda_stream(live(), &device, &stream), raw_);
        return {device, stream};
    }

    using LogFn = std::function<void(moth_log_level, const char *)>;
    /// Routes the session's log messages to `fn` (empty: none).
    void set_log(LogFn fn) {
        if (!fn) {
            check(moth_session_set_log_callback(live(), nullptr, nullptr, nullptr), raw_);
            log_.reset();
            return;
        }
        auto holder = std::make_unique<LogFn>(std::move(fn));
        check(moth_session_set_log_callback(live(), &Session::log_trampoline, holder.get(), nullptr),
              raw_);
        log_ = std::move(holder); // the previous function is released after the swap
    }

    moth_session *get() const noexcept { return raw_; }

  private:
    explicit Session(moth_session *raw) noexcept : raw_(raw) {}

    moth_session *live() const { return detail::live(raw_, "Session"); }

    static void log_trampoline(moth_log_level level, const char *msg, void *user) noexcept {
        try {
            (*static_cast<LogFn *>(user))(level, msg);
        } catch (...) {
        }
    }

    moth_session *raw_ = nullptr;
    // The log function's owner: destroyed after ~Session() freed the session,
    // so the session never sees a dangling user pointer.
    std::unique_ptr<LogFn> log_;
};

} // namespace moth

#include "moth_distance.hpp"
#include "moth_trainer.hpp"

#endif // MOTH_HPP
