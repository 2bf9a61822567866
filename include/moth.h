/*
 * moth: MOTH model orthogonalisation (class-distance hardening) - C API.
 *
 * Conventions
 * - Every function returns a moth_status unless stated otherwise: 0 (MOTH_STATUS_OK) is
 *   success, positive values are flow signals (MOTH_STATUS_DONE, MOTH_STATUS_ACCURACY_WANTED,
 *   MOTH_STATUS_CANCELLED), negative values are failures. moth_status_name() spells a status; moth_last_error() and
 *   moth_session_last_error() give the message of the last failure.
 * - Objects are opaque handles: every moth_x_new/_load/_from_* has a moth_x_free, and
 *   moth_x_free(NULL) does nothing. Memory moth allocates is freed only by moth.
 * - Every handle starts with a tag naming its type, which its moth_x_free overwrites. A
 *   handle that was freed already (a double free, a use after free) or a handle of another
 *   type (a tensor passed as a session) gives MOTH_STATUS_INVALID_HANDLE; a moth_x_free
 *   given one does nothing and leaves the message for moth_last_error(). moth keeps the
 *   memory of the last 1024 freed handles to tell them apart. Still undefined: a handle
 *   used after 1024 more handles were freed (its memory may be reused), and pointers moth
 *   never made (arbitrary addresses, or memory of the caller's own).
 * - Pointer arguments must be NULL (where allowed) or point to live objects of the documented
 *   type; buffers must hold the stated number of bytes or elements. A NULL pointer where one
 *   is required gives MOTH_STATUS_NULL_POINTER. Strings are NUL-terminated UTF-8.
 * - Out-parameters are zeroed on entry and written only on success (the `needed` size of the
 *   buffer functions is also written when the buffer is too small).
 * - Input enumerations (moth_dtype, moth_device_type, moth_matrix_kind) are int32_t with
 *   #define values; an unknown value gives MOTH_STATUS_INVALID_ARGUMENT.
 * - No panic or exception crosses this boundary: an internal error returns MOTH_STATUS_PANIC
 *   and poisons the session or classifier it happened in (later calls: MOTH_STATUS_POISONED).
 *   Callbacks given to moth must not throw or unwind either.
 *
 * What the header offers
 * - Hardening: moth_config + moth_session (the step protocol), on a moth_classifier.
 * - Training: moth_trainer (moth's own SGD/Adam for TorchScript classifiers, checkpointed
 *   with the model: moth_trainer_save beside moth_session_save resumes a run bit for bit).
 * - Class distances: moth_distance_config + moth_distance_measure -> moth_distance_result
 *   (the same core function as the CLI's `moth distance`).
 * - Classifiers: TorchScript files (moth_classifier_from_torchscript), libtorch forward
 *   callbacks (moth_classifier_from_callback), or host-buffer callbacks with their own input
 *   gradient for models of any framework (moth_classifier_from_host).
 *
 * Buffer layouts
 * - Images are float pixels in [0, 1], shape [N, C, H, W], C order (row-major, NCHW):
 *   element (n, c, y, x) is at ((n * C + c) * H + y) * W + x. A Julia Array{Float32,4} of
 *   size (W, H, C, N) (Flux's WHCN) and a NumPy float32 array of shape (N, C, H, W) are this
 *   same memory. Labels are [N] integers. Logits and their gradients are [N, classes],
 *   row-major. Matrices are N x N doubles, row-major, row = source (victim) class.
 * - Trigger masks are [H, W] floats, patterns [C, H, W], both in [0, 1]; a stamped image is
 *   (1 - mask) * x + mask * pattern.
 *
 * Ownership
 * - Tensors made from buffers copy them: the caller keeps its memory. Buffers moth hands to a
 *   callback belong to moth and live for that call only. Handles moth returns through an
 *   out-parameter belong to the caller, who frees them with their moth_x_free. user_data
 *   given with a free function is freed by moth exactly once (when its object is freed); when
 *   the creating call fails, the caller keeps it.
 *
 * Threads
 * - A session may be used from any thread; concurrent calls on one session are serialised by
 *   a per-session mutex. The same holds for a classifier. A config or tensor handle must not
 *   be used by two threads at once. Callbacks (forward, input_grad, set_train, log,
 *   progress) run synchronously on
 *   the thread that called moth, never on another thread; a callback that calls back into
 *   the object that invoked it gets MOTH_STATUS_BUSY.
 * - moth never changes libtorch's process-wide settings (thread counts) and never installs a
 *   process-wide logger.
 *
 * CUDA
 * - moth runs libtorch on the calling thread, so its kernels go to that thread's current
 *   CUDA stream: make your stream current (c10::cuda::CUDAStreamGuard) around moth calls, or
 *   give a session its own stream with moth_session_set_cuda_stream(), which moth makes
 *   current (with its device) for each moth_session_harden_batch call and restores after it.
 *   In a process without CUDA that call returns MOTH_STATUS_UNSUPPORTED.
 * - libmoth.so links libtorch_cpu.so only; CUDA becomes available once libtorch_cuda.so is
 *   loaded in the process (a C++ program linking libtorch_cuda, or moth loading it on the
 *   first CUDA request).
 */

#ifndef MOTH_H
#define MOTH_H

/* DO NOT EDIT. Generated by cbindgen 0.29.4 from src/ffi/ (settings in
 * cbindgen.toml). Regenerate with scripts/gen-header.sh. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
/** Marks functions whose returned status must not be ignored. */
#if defined(__GNUC__) || defined(__clang__)
#define MOTH_MUST_USE __attribute__((warn_unused_result))
#else
#define MOTH_MUST_USE
#endif

/**
 * Maximum number of directions one step reports.
 */
#define MOTH_MAX_DIRECTIONS 2

/**
 * Major version of moth (`MAJOR.MINOR.PATCH`, as in Cargo.toml).
 */
#define MOTH_VERSION_MAJOR 0

/**
 * Minor version of moth.
 */
#define MOTH_VERSION_MINOR 1

/**
 * Patch version of moth.
 */
#define MOTH_VERSION_PATCH 0

/**
 * Version of the C ABI described by this header. It changes whenever a
 * function, type, struct layout or enumeration value changes
 * incompatibly; bindings compare `moth_abi_version()` with it on load.
 */
#define MOTH_ABI_VERSION 1

/**
 * What a moth C function reports. `0` is success, positive values are flow
 * signals a step-driven caller acts on (nothing failed, but the call did not
 * do its work), negative values are failures. Codes are never reused: a
 * retired code stays reserved.
 */
enum moth_status
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * Success.
     */
    MOTH_STATUS_OK = 0,
    /**
     * Flow signal: the session is done; nothing was hardened.
     */
    MOTH_STATUS_DONE = 1,
    /**
     * Flow signal: the session waits for a clean-accuracy report
     * (`moth_session_report_accuracy`) before its next step.
     */
    MOTH_STATUS_ACCURACY_WANTED = 2,
    /**
     * Flow signal: the caller's progress callback asked the computation
     * to stop (`moth_distance_measure`); nothing was produced.
     */
    MOTH_STATUS_CANCELLED = 3,
    /**
     * A required pointer argument was NULL.
     */
    MOTH_STATUS_NULL_POINTER = -1,
    /**
     * A string argument was not valid UTF-8.
     */
    MOTH_STATUS_INVALID_UTF8 = -2,
    /**
     * An argument is out of its allowed range (an unknown enumeration value,
     * a negative dimension, a size that overflows, ...).
     */
    MOTH_STATUS_INVALID_ARGUMENT = -3,
    /**
     * A configuration value or JSON document was rejected.
     */
    MOTH_STATUS_INVALID_CONFIG = -4,
    /**
     * Input data was rejected (none of the more precise input codes applies).
     */
    MOTH_STATUS_INVALID_INPUT = -5,
    /**
     * A tensor has the wrong shape (batch and labels disagree, the input
     * shape differs from the session's, an empty batch).
     */
    MOTH_STATUS_WRONG_SHAPE = -6,
    /**
     * A tensor has the wrong element type (labels must be integers, pixels
     * floating point).
     */
    MOTH_STATUS_WRONG_DTYPE = -7,
    /**
     * A label is outside `[0, num_classes)`.
     */
    MOTH_STATUS_LABEL_OUT_OF_RANGE = -8,
    /**
     * Tensor values are outside their domain (pixels outside `[0, 1]`,
     * NaN or infinite values, an accuracy outside `[0, 1]`).
     */
    MOTH_STATUS_INVALID_VALUE = -9,
    /**
     * The call is not allowed in the session's current phase.
     */
    MOTH_STATUS_PHASE = -10,
    /**
     * A checkpoint was refused (another format version, corrupted,
     * truncated, or made for another model).
     */
    MOTH_STATUS_CHECKPOINT = -11,
    /**
     * An operating-system I/O error.
     */
    MOTH_STATUS_IO = -12,
    /**
     * A file could not be parsed (a TorchScript module, a dataset), or a
     * value could not be serialised (a configuration to JSON).
     */
    MOTH_STATUS_FORMAT = -13,
    /**
     * The requested device could not be used.
     */
    MOTH_STATUS_DEVICE = -14,
    /**
     * libtorch reported an error.
     */
    MOTH_STATUS_TORCH = -15,
    /**
     * A caller-supplied callback failed: it returned a non-zero status, or
     * a forward callback returned 0 without storing logits, or with logits
     * that gradients cannot flow through (detached, or computed with
     * autograd off).
     */
    MOTH_STATUS_CALLBACK = -16,
    /**
     * A caller buffer is too small; the needed size was written.
     */
    MOTH_STATUS_BUFFER_TOO_SMALL = -17,
    /**
     * A panic (a bug in moth) was caught at the boundary. When it happened
     * while a session or classifier was in use, that object is poisoned.
     */
    MOTH_STATUS_PANIC = -18,
    /**
     * The object was poisoned by an earlier panic; free it.
     */
    MOTH_STATUS_POISONED = -19,
    /**
     * The object is in use by a call further up this thread's stack (for
     * example a callback calling back into the session that invoked it).
     */
    MOTH_STATUS_BUSY = -20,
    /**
     * The operation is not supported by this build or machine (CUDA or
     * CUDA streams in a process without CUDA).
     */
    MOTH_STATUS_UNSUPPORTED = -21,
    /**
     * A handle argument is not a live handle of the expected type: it was
     * freed already, or it is a handle of another type (a tensor passed as
     * a session). See the header's preamble for what moth cannot detect.
     */
    MOTH_STATUS_INVALID_HANDLE = -22,
    /**
     * The model's outputs cannot be used: a trigger inversion diverged on
     * NaN or infinite logits, or a step would have put non-finite values
     * into the session (which is then unchanged).
     */
    MOTH_STATUS_MODEL_OUTPUT = -23,
    /**
     * The data-parallel ranks could not agree: a collective callback
     * failed (a timeout in the trainer's process group, say), the ranks
     * are out of step, or the session was hardened by another number of
     * ranks. The session is unchanged; stop every rank.
     */
    MOTH_STATUS_COLLECTIVE = -24,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_status moth_status;
#else
typedef int32_t moth_status;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * What the session's next step does (`moth_phase.kind`).
 */
enum moth_phase_kind
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * Warm-up: the universal trigger of `target` is generated next.
     */
    MOTH_PHASE_KIND_WARMUP = 0,
    /**
     * Orthogonalisation of the pair `source`/`target`, step
     * `step_in_period` of its period.
     */
    MOTH_PHASE_KIND_ORTHOGONALIZE = 1,
    /**
     * Universal baseline method: the universal trigger of `target`.
     */
    MOTH_PHASE_KIND_UNIVERSAL = 2,
    /**
     * Finished (`done_reason` says why); no further hardening.
     */
    MOTH_PHASE_KIND_DONE = 3,
    /**
     * Recovery (`recover_steps`): accuracy fell beyond the bound; the next
     * step hands back the clean batch. `step_in_period` counts the clean
     * steps taken so far.
     */
    MOTH_PHASE_KIND_RECOVER = 4,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_phase_kind moth_phase_kind;
#else
typedef int32_t moth_phase_kind;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * Why a session finished.
 */
enum moth_done_reason
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * Not finished.
     */
    MOTH_DONE_REASON_NONE = 0,
    /**
     * The configured number of steps (`max_steps`) was reached.
     */
    MOTH_DONE_REASON_STEP_BUDGET = 1,
    /**
     * Clean accuracy fell more than `max_accuracy_drop` below the baseline.
     */
    MOTH_DONE_REASON_ACCURACY_BOUND = 2,
    /**
     * Recovery (`recover_steps`) ran out of clean steps before accuracy
     * came back within half of `max_accuracy_drop`.
     */
    MOTH_DONE_REASON_RECOVERY_EXHAUSTED = 3,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_done_reason moth_done_reason;
#else
typedef int32_t moth_done_reason;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * The answer to an accuracy report.
 */
enum moth_verdict
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * No verdict (the out-parameter's value when the call failed).
     */
    MOTH_VERDICT_NONE = 0,
    /**
     * The first report, recorded as the baseline.
     */
    MOTH_VERDICT_BASELINE = 1,
    /**
     * Within the bound: keep this model as the latest good one.
     */
    MOTH_VERDICT_WITHIN_BOUND = 2,
    /**
     * Beyond the bound: the session is done; return to the last model
     * that was within the bound.
     */
    MOTH_VERDICT_EXCEEDED = 3,
    /**
     * Beyond the bound, and the session recovers (`recover_steps`): keep
     * training this model on the clean batches it hands back; do not
     * record it as a good one.
     */
    MOTH_VERDICT_RECOVERING = 4,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_verdict moth_verdict;
#else
typedef int32_t moth_verdict;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * Severity of a log message (the `log` crate's levels).
 */
enum moth_log_level
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
    /**
     * A call failed (the message is also the session's last error).
     */
    MOTH_LOG_LEVEL_ERROR = 1,
    /**
     * Something the caller should know about.
     */
    MOTH_LOG_LEVEL_WARN = 2,
    /**
     * One line per step, accuracy verdicts, checkpoints.
     */
    MOTH_LOG_LEVEL_INFO = 3,
    /**
     * Details.
     */
    MOTH_LOG_LEVEL_DEBUG = 4,
    /**
     * Very fine details.
     */
    MOTH_LOG_LEVEL_TRACE = 5,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum moth_log_level moth_log_level;
#else
typedef int32_t moth_log_level;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * An owned byte buffer made by moth (a checkpoint). Read it with
 * `moth_buffer_data`, free it with `moth_buffer_free`.
 */
typedef struct moth_buffer moth_buffer;

/**
 * A classifier handle (opaque). Free with `moth_classifier_free`. Calls
 * that use it are serialised by its own mutex; it may be shared by several
 * sessions.
 */
typedef struct moth_classifier moth_classifier;

/**
 * A session configuration (opaque). Create with `moth_config_new`, free
 * with `moth_config_free`. Not thread-safe: do not use one config from
 * two threads at once. A session copies it, so it may be freed or changed
 * once `moth_session_new` returned.
 */
typedef struct moth_config moth_config;

/**
 * A distance protocol (opaque): samples per class, inversion steps, seeds,
 * initial cost, ASR bound and the inversion optimiser. Create with
 * `moth_distance_config_new`, free with `moth_distance_config_free`. Not
 * thread-safe (one thread at a time); a measurement copies it.
 */
typedef struct moth_distance_config moth_distance_config;

/**
 * The result of a measurement (opaque): the directed distance matrix, the
 * protocol and the smallest trigger of every measured direction that
 * reached the ASR bound. Free with `moth_distance_result_free`. Read-only,
 * so it may be read from several threads at once.
 */
typedef struct moth_distance_result moth_distance_result;

/**
 * A hardening session (opaque). Create with `moth_session_new` or
 * `moth_session_load`, free with `moth_session_free`. Thread safety: a
 * session may be used from any thread; concurrent calls on one session are
 * serialised by its mutex (a call waits for the one in progress). A call
 * from inside a callback that the same session invoked returns
 * `MOTH_STATUS_BUSY`. Its last error is kept on the handle, so it survives
 * a runtime moving the caller between threads.
 */
typedef struct moth_session moth_session;

/**
 * A tensor handle (opaque). Owns one reference to a libtorch tensor;
 * free it with `moth_tensor_free`. Thread safety: a handle may be used from
 * any thread, but not from two threads at once.
 */
typedef struct moth_tensor moth_tensor;

/**
 * A trainer (opaque): moth's optimiser bound to one TorchScript
 * classifier, which must outlive it (a step after the classifier was freed
 * gives `MOTH_STATUS_INVALID_HANDLE`). Create with `moth_trainer_new` or
 * `moth_trainer_load`, free with `moth_trainer_free`. Calls on one trainer
 * are serialised by its mutex.
 */
typedef struct moth_trainer moth_trainer;

/**
 * Kind of device: one of the `MOTH_DEVICE_TYPE_*` values.
 */
typedef int32_t moth_device_type;

/**
 * Where a tensor or a model lives.
 */
typedef struct {
    /**
     * `MOTH_DEVICE_TYPE_CPU` or `MOTH_DEVICE_TYPE_CUDA`.
     */
    moth_device_type type;
    /**
     * CUDA device index (0 for the CPU).
     */
    int32_t index;
} moth_device;

/**
 * Forward callback: compute logits `[n, classes]` for `input`
 * (`[n, C, H, W]` floats in `[0, 1]`, on the classifier's device) such that
 * gradients flow from the logits back to the input (do not detach, do not
 * run under no-grad). Store a new tensor handle in `*logits_out` (moth takes
 * ownership and frees it) and return 0; return any non-zero value to fail
 * (moth then returns `MOTH_STATUS_CALLBACK`; call `moth_callback_set_error`
 * first to say why). `input` is borrowed for the duration of the call:
 * storing it in `*logits_out` is refused with `MOTH_STATUS_CALLBACK`, and
 * so is anything else that is not a live tensor handle (which moth then
 * leaves alone).
 * Called synchronously on the thread that called moth, with the session
 * and this classifier locked; it must not throw (C++) or unwind. Inside it,
 * call only `moth_tensor_*` functions and `moth_callback_set_error`: a call
 * on the invoking session or classifier returns `MOTH_STATUS_BUSY`, and
 * waiting on objects other threads hold could deadlock.
 *
 * C++: `at::Tensor x = *static_cast<at::Tensor*>(p)` with `p` from
 * `moth_tensor_to_at_tensor(input, &p)`, then
 * `at::Tensor y = module->forward(x);` and
 * `moth_tensor_from_at_tensor(&y, logits_out)`.
 */
typedef int32_t (*moth_forward_fn)(void *user_data,
                                   const moth_tensor *input,
                                   moth_tensor **logits_out);

/**
 * Switches the caller's model between training (`train = true`) and
 * evaluation behaviour (BatchNorm statistics, dropout). moth sets
 * evaluation mode for its inversions; the caller's own training loop sets
 * training mode again. Returns 0, or non-zero to fail.
 */
typedef int32_t (*moth_set_train_fn)(void *user_data, bool train);

/**
 * Frees caller user data when moth no longer needs it (a callback was
 * replaced, or its session or classifier was freed).
 */
typedef void (*moth_free_fn)(void *user_data);

/**
 * Sums the `count` floats at `values` element-wise over all ranks, in
 * place (every rank must receive the same bits, as Gloo, NCCL and MPI
 * all-reduces give). Returns 0 on success, anything else on failure.
 */
typedef int32_t (*moth_all_reduce_fn)(float *values, size_t count, void *user_data);

/**
 * Replaces the `len` bytes at `bytes` on every rank by rank 0's (every
 * rank passes the same `len`). Returns 0 on success, anything else on
 * failure.
 */
typedef int32_t (*moth_broadcast_fn)(uint8_t *bytes, size_t len, void *user_data);

/**
 * The trainer's collective for one rank, as given to
 * `moth_session_set_collective`. moth copies the struct.
 */
typedef struct {
    /**
     * This process's rank, in `[0, world_size)`.
     */
    int32_t rank;
    /**
     * The number of ranks.
     */
    int32_t world_size;
    /**
     * All-reduce (sum) of floats; required.
     */
    moth_all_reduce_fn all_reduce_sum;
    /**
     * Broadcast of bytes from rank 0; required.
     */
    moth_broadcast_fn broadcast;
    /**
     * Passed to both callbacks.
     */
    void *user_data;
    /**
     * Frees `user_data` when moth no longer needs it (may be NULL).
     */
    moth_free_fn free_user_data;
} moth_collective;

/**
 * Progress callback of `moth_distance_measure`: `done` of `total` directed
 * pairs are measured (counted over all seeds; called after each source
 * class of each seed). Return 0 to go on, any other value to stop: the
 * measurement then returns `MOTH_STATUS_CANCELLED` and no result. Called
 * on the measuring thread with the classifier locked: call no moth
 * function on that classifier from inside it (`MOTH_STATUS_BUSY`).
 */
typedef int32_t (*moth_distance_progress_fn)(void *user_data, size_t done, size_t total);

/**
 * Host forward callback: write the logits of the `n` inputs at `input`
 * into `logits_out`, row-major `[n, num_classes]` (`logits_out[i *
 * num_classes + k]` is input `i`'s logit for class `k`; `n * num_classes`
 * floats). `input` holds `n * c * h * w` floats in `[0, 1]`, NCHW
 * row-major (`input[((i * c + ch) * h + y) * w + x]`); a Julia
 * `Array{Float32,4}` of size `(w, h, c, n)` (Flux's WHCN layout) is the
 * same memory, so `unsafe_wrap(Array, input, (w, h, c, n))` reads it with
 * no copy. Both buffers belong to moth and are valid only during the call:
 * copy what you keep. Return 0, or non-zero to fail
 * (`MOTH_STATUS_CALLBACK`; `moth_callback_set_error` first says why).
 * Called on the thread that called moth, with the classifier locked; it
 * must not unwind or throw, and may call only `moth_callback_set_error`.
 */
typedef int32_t (*moth_host_forward_fn)(void *user_data,
                                        const float *input,
                                        size_t n,
                                        size_t c,
                                        size_t h,
                                        size_t w,
                                        float *logits_out,
                                        size_t num_classes);

/**
 * Host input-gradient callback (a vector-Jacobian product): for the `n`
 * inputs at `input` (layout as `moth_host_forward_fn`) and the gradient
 * `grad_logits` of moth's loss with respect to their logits (`[n,
 * num_classes]` row-major), write `dL/dinput = J(input)^T grad_logits`
 * into `grad_input` (`n * c * h * w` floats, the layout of `input`). The
 * model is in evaluation mode; compute the gradient of the forward pass
 * as `moth_host_forward_fn` computes it for the same input. Buffers,
 * status and threading as for `moth_host_forward_fn`.
 */
typedef int32_t (*moth_host_input_grad_fn)(void *user_data,
                                           const float *input,
                                           size_t n,
                                           size_t c,
                                           size_t h,
                                           size_t w,
                                           const float *grad_logits,
                                           size_t num_classes,
                                           float *grad_input);

/**
 * A session phase.
 */
typedef struct {
    /**
     * Which phase.
     */
    moth_phase_kind kind;
    /**
     * Target class (warm-up, universal, orthogonalise); 0 when done.
     */
    size_t target;
    /**
     * Source class of the pair (orthogonalise only; 0 otherwise).
     */
    size_t source;
    /**
     * 0-based step within the pair's period (orthogonalise only).
     */
    size_t step_in_period;
    /**
     * Why the session finished (`MOTH_DONE_REASON_NONE` unless done).
     */
    moth_done_reason done_reason;
} moth_phase;

/**
 * What one generated trigger did in a step.
 */
typedef struct {
    /**
     * Victim class whose samples were stamped, or -1 for a universal
     * trigger (its victims are all other classes).
     */
    int64_t victim;
    /**
     * Target class the trigger flips victims to.
     */
    size_t target;
    /**
     * Trigger size (`C * sum(mask)`; 0 when the inversion failed).
     */
    double size;
    /**
     * Whether the inversion reached its attack-success bound.
     */
    bool reached;
    /**
     * The stamping bound the size was compared with.
     */
    double bound;
    /**
     * Samples stamped with it.
     */
    size_t stamped;
} moth_direction;

/**
 * The report of the last `moth_session_harden_batch` call.
 */
typedef struct {
    /**
     * 0-based index of the step.
     */
    uint64_t step;
    /**
     * The phase the step ran in.
     */
    moth_phase phase;
    /**
     * Valid entries of `directions` (0 when the batch held too few samples
     * of the pair to harden, 1 for warm-up/universal/asymmetric, 2 for a
     * two-sided step).
     */
    size_t num_directions;
    /**
     * Per generated trigger.
     */
    moth_direction directions[MOTH_MAX_DIRECTIONS];
    /**
     * Inversion steps (passes over the inversion set) used.
     */
    size_t inversion_steps;
    /**
     * Wall time of the call, seconds.
     */
    double seconds;
} moth_step_report;

/**
 * Accuracy bookkeeping of a session.
 */
typedef struct {
    /**
     * Whether a baseline was reported.
     */
    bool has_baseline;
    /**
     * The first reported accuracy.
     */
    double baseline;
    /**
     * Whether any accuracy was reported.
     */
    bool has_last;
    /**
     * The latest reported accuracy.
     */
    double last;
    /**
     * A report is due before the next step.
     */
    bool pending;
} moth_accuracy;

/**
 * The model a session was made for.
 */
typedef struct {
    /**
     * Number of classes.
     */
    size_t num_classes;
    /**
     * Channels of one input.
     */
    int64_t c;
    /**
     * Height of one input.
     */
    int64_t h;
    /**
     * Width of one input.
     */
    int64_t w;
} moth_spec;

/**
 * Which scheduler matrix `moth_session_matrix` copies: one of the
 * `MOTH_MATRIX_*` values.
 */
typedef int32_t moth_matrix_kind;

/**
 * A log callback: `message` is a NUL-terminated UTF-8 string borrowed for
 * the duration of the call (copy it to keep it). Called synchronously on
 * the thread that made the moth call, never from another thread. It must
 * not throw (C++) or unwind, and must not call back into the same session
 * (such a call returns `MOTH_STATUS_BUSY`).
 */
typedef void (*moth_log_fn)(moth_log_level level, const char *message, void *user_data);

/**
 * Element type of a tensor: one of the `MOTH_DTYPE_*` values. An input
 * enumeration is a plain `int32_t` so that any value a caller passes is
 * checked (`MOTH_STATUS_INVALID_ARGUMENT`) instead of being undefined
 * behaviour.
 */
typedef int32_t moth_dtype;

/**
 * Prior scores from the warm-up (`univ[i][t]`).
 */
#define MOTH_MATRIX_UNIV 0

/**
 * Latest period-averaged trigger size per direction.
 */
#define MOTH_MATRIX_SIZE 1

/**
 * Post-selection score (smoothed relative change of the size).
 */
#define MOTH_MATRIX_DIFF 2

/**
 * How often each pair was chosen (symmetric).
 */
#define MOTH_MATRIX_COUNT 3

/**
 * 32-bit IEEE float (`float`, `torch::kFloat32`): the pixel type.
 */
#define MOTH_DTYPE_FLOAT32 0

/**
 * 64-bit IEEE float (`double`).
 */
#define MOTH_DTYPE_FLOAT64 1

/**
 * 64-bit signed integer (`int64_t`): the usual label type.
 */
#define MOTH_DTYPE_INT64 2

/**
 * 32-bit signed integer (`int32_t`).
 */
#define MOTH_DTYPE_INT32 3

/**
 * 8-bit unsigned integer (`uint8_t`).
 */
#define MOTH_DTYPE_UINT8 4

/**
 * Host memory.
 */
#define MOTH_DEVICE_TYPE_CPU 0

/**
 * A CUDA GPU; `moth_device.index` selects which.
 */
#define MOTH_DEVICE_TYPE_CUDA 1

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Writes the buffer's start and length. The bytes stay valid, unchanged,
 * until `moth_buffer_free`.
 */
MOTH_MUST_USE
moth_status moth_buffer_data(const moth_buffer *buffer,
                             const uint8_t **out_data,
                             size_t *out_len);

/**
 * Frees a buffer. `moth_buffer_free(NULL)` does nothing.
 */
void moth_buffer_free(moth_buffer *buffer);

/**
 * Saves the session to a checkpoint file at `path`, atomically (a
 * temporary file in the same folder, then a rename). The checkpoint holds
 * the whole hardening state (matrices, triggers, bounds, counters, RNG,
 * configuration); the model and optimiser are the caller's to save.
 */
MOTH_MUST_USE moth_status moth_session_save(const moth_session *session, const char *path);

/**
 * Serialises the session into a new buffer (the checkpoint file's bytes).
 */
MOTH_MUST_USE
moth_status moth_session_to_buffer(const moth_session *session,
                                   moth_buffer **out_buffer);

/**
 * Loads a session saved with `moth_session_save`. With `num_classes > 0`
 * the checkpoint must have been made for that class count and input shape
 * `[c, h, w]` (`MOTH_STATUS_CHECKPOINT` otherwise); `num_classes == 0`
 * accepts any (read the spec with `moth_session_spec`). A corrupted,
 * truncated or other-version file gives `MOTH_STATUS_CHECKPOINT`.
 */
MOTH_MUST_USE
moth_status moth_session_load(const char *path,
                              size_t num_classes,
                              int64_t c,
                              int64_t h,
                              int64_t w,
                              moth_session **out_session);

/**
 * Restores a session from `len` bytes at `data` (made by
 * `moth_session_to_buffer` or read from a checkpoint file); `num_classes`,
 * `c`, `h`, `w` as for `moth_session_load`. The bytes are not kept.
 * `data` may be NULL only when `len` is 0 (an empty buffer, refused as a
 * truncated checkpoint with `MOTH_STATUS_CHECKPOINT`).
 */
MOTH_MUST_USE
moth_status moth_session_from_buffer(const uint8_t *data,
                                     size_t len,
                                     size_t num_classes,
                                     int64_t c,
                                     int64_t h,
                                     int64_t w,
                                     moth_session **out_session);

/**
 * Loads a TorchScript module (saved with `torch.jit.save`) whose forward
 * takes `[n, c, h, w]` float inputs in `[0, 1]` (normalisation belongs
 * inside the module) and returns logits `[n, classes]`, onto `device`. The
 * class count is read from a probe forward pass. A file that cannot be
 * opened, or a folder, gives `MOTH_STATUS_IO`; one that is not a
 * TorchScript module, or
 * whose forward fails on the probe, `MOTH_STATUS_FORMAT`.
 */
MOTH_MUST_USE
moth_status moth_classifier_from_torchscript(const char *path,
                                             int64_t c,
                                             int64_t h,
                                             int64_t w,
                                             moth_device device,
                                             moth_classifier **out_classifier);

/**
 * Creates a classifier from caller callbacks. `forward` is required;
 * `set_train` may be NULL (the model has no train/eval difference);
 * `user_data` is passed to both; `free_user_data` (may be NULL) is called
 * with `user_data` once, when the classifier is freed (when this call
 * fails, the caller keeps ownership of `user_data`). `device` is where the model's
 * parameters live: moth moves inputs there before calling `forward`.
 */
MOTH_MUST_USE
moth_status moth_classifier_from_callback(moth_forward_fn forward,
                                          moth_set_train_fn set_train,
                                          void *user_data,
                                          moth_free_fn free_user_data,
                                          moth_device device,
                                          moth_classifier **out_classifier);

/**
 * Switches the classifier between training and evaluation mode (calls the
 * `set_train` callback, or sets a TorchScript module's mode).
 */
MOTH_MUST_USE moth_status moth_classifier_set_train(moth_classifier *classifier, bool train);

/**
 * Computes logits for `input` (no gradients) into a new tensor handle, for
 * example to measure clean accuracy with a TorchScript classifier.
 */
MOTH_MUST_USE
moth_status moth_classifier_forward(moth_classifier *classifier,
                                    const moth_tensor *input,
                                    moth_tensor **out_logits);

/**
 * Saves a TorchScript classifier (with any training the caller did through
 * moth) to `path`, loadable from Python with `torch.jit.load`. A callback
 * classifier gives `MOTH_STATUS_UNSUPPORTED` (its model is the caller's);
 * a folder that does not exist, `MOTH_STATUS_IO`.
 */
MOTH_MUST_USE moth_status moth_classifier_save(moth_classifier *classifier, const char *path);

/**
 * Frees a classifier (calling its `free_user_data`, if any).
 * `moth_classifier_free(NULL)` does nothing.
 */
void moth_classifier_free(moth_classifier *classifier);

/**
 * Leaves a message for moth to report when the callback running on this
 * thread returns a non-zero status (for example a C++ exception's
 * `what()`). Call it from inside a forward, input_grad or set_train
 * callback, just before returning non-zero. NULL clears it.
 */
MOTH_MUST_USE moth_status moth_callback_set_error(const char *message);

/**
 * Makes the session one rank of a data-parallel run (NULL: a single
 * process again). Every rank drives its own session, made with the same
 * configuration (or loaded from the same checkpoint), on its own shard of
 * each batch, on a model its trainer keeps identical across ranks (DDP);
 * each `moth_session_harden_batch` then calls the callbacks: per inversion
 * mini-batch one all-reduce of the trigger gradients, per step a few more
 * (class counts, a digest of the state that must agree), and broadcasts
 * while the warm-up pool fills. All ranks' sessions hold the same state
 * and write the same checkpoint bytes; the checkpoint records the world
 * size, and a session that took steps with N ranks continues only with N
 * (`MOTH_STATUS_COLLECTIVE` otherwise, here or at the next step).
 *
 * The callbacks run with the session locked, on the calling thread, and
 * must not throw (C++) or unwind. moth has no timeout of its own: a
 * callback that cannot complete (a peer gone, ranks out of step) must
 * return non-zero after the process group's timeout rather than block for
 * ever. A failing callback, or ranks found out of step (each all-reduce
 * carries a tag), fail the step with `MOTH_STATUS_COLLECTIVE` and leave the
 * session unchanged; stop every rank then. Not saved in checkpoints: set
 * it again after loading one.
 *
 * The struct is copied. moth owns `user_data` from this call on: it is
 * freed with `free_user_data` (when set) when the hook is replaced or
 * cleared, when the session is freed, or at once when this call fails.
 */
MOTH_MUST_USE
moth_status moth_session_set_collective(moth_session *session,
                                        const moth_collective *collective);

/**
 * Creates a configuration holding moth's default preset (see
 * `moth_config_set_preset` for the authors' reference settings).
 */
MOTH_MUST_USE moth_status moth_config_new(moth_config **out_config);

/**
 * Frees a configuration. `moth_config_free(NULL)` does nothing.
 */
void moth_config_free(moth_config *config);

/**
 * Merges a JSON object into the configuration: keys present replace the
 * current values, nested objects are merged key by key, absent keys keep
 * their values. Unknown keys, wrong types and out-of-range values are
 * refused with `MOTH_STATUS_INVALID_CONFIG` and leave the configuration
 * unchanged. Example: `{"seed": 3, "warmup": {"budget": {"steps": 50}}}`.
 */
MOTH_MUST_USE moth_status moth_config_set_json(moth_config *config, const char *json);

/**
 * Sets an integer setting by its dotted key, e.g. `"seed"`,
 * `"max_steps"`, `"warmup.budget.steps"`. Refuses unknown keys, groups and
 * values of the wrong type (`MOTH_STATUS_INVALID_CONFIG`).
 */
MOTH_MUST_USE moth_status moth_config_set_int(moth_config *config, const char *key, int64_t value);

/**
 * Sets an unsigned integer setting by its dotted key (for the full range
 * of `"seed"`).
 */
MOTH_MUST_USE
moth_status moth_config_set_uint(moth_config *config,
                                 const char *key,
                                 uint64_t value);

/**
 * Sets a floating-point setting by its dotted key, e.g. `"portion"`,
 * `"inversion.lr"`.
 */
MOTH_MUST_USE
moth_status moth_config_set_double(moth_config *config,
                                   const char *key,
                                   double value);

/**
 * Replaces every setting with those of a preset: `"default"` (moth's
 * default) or `"reference"` (the authors' published settings, exactly).
 * `MOTH_STATUS_INVALID_CONFIG` for another name, the configuration
 * unchanged.
 */
MOTH_MUST_USE moth_status moth_config_set_preset(moth_config *config, const char *preset);

/**
 * Sets a string setting by its dotted key: `"method"` (`"moth"`,
 * `"universal"`, `"pairwise"`, `"asymmetric"`, as the CLI's `--method`
 * spells them) or `"bounds.mode"` (`"fixed"`, `"growing"`). Names are
 * case-insensitive (`moth_config_to_json` prints them capitalised, `"Moth"`).
 */
MOTH_MUST_USE
moth_status moth_config_set_string(moth_config *config,
                                   const char *key,
                                   const char *value);

/**
 * Writes the complete configuration (every setting, defaults included) as
 * a JSON object into `buf`. `*needed` receives the size required including
 * the NUL in every case; pass `buf = NULL, len = 0` to query it. Returns
 * `MOTH_STATUS_BUFFER_TOO_SMALL` when `len < *needed` (nothing written).
 */
MOTH_MUST_USE
moth_status moth_config_to_json(const moth_config *config,
                                char *buf,
                                size_t len,
                                size_t *needed);

/**
 * Creates a protocol from a preset: `"quick"` (32 samples per class, 200
 * steps, seed 0: the CLI's CPU default), `"confirm"` (64 samples, 600
 * steps, seeds 0 and 1) or `"paper"` (100 samples, 1000 steps, seeds 0, 1,
 * 2: the CUDA default). All use initial cost 1e-3 and ASR bound 0.9, as
 * `moth distance --protocol NAME` does. `MOTH_STATUS_INVALID_CONFIG` for
 * another name.
 */
MOTH_MUST_USE
moth_status moth_distance_config_new(const char *preset,
                                     moth_distance_config **out_config);

/**
 * Frees a protocol. `moth_distance_config_free(NULL)` does nothing.
 */
void moth_distance_config_free(moth_distance_config *config);

/**
 * Sets the samples inverted per source class (`moth distance --samples`),
 * at least 1.
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_samples(moth_distance_config *config,
                                             size_t samples_per_class);

/**
 * Sets the inversion steps per direction (`moth distance --steps`), at
 * least 1.
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_steps(moth_distance_config *config,
                                           size_t steps);

/**
 * Sets the seeds (`moth distance --seeds`): `seeds[0..count]`, at least
 * one. Each seed is a full measurement; a distance is the smallest over
 * the seeds that reached the bound.
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_seeds(moth_distance_config *config,
                                           const uint64_t *seeds,
                                           size_t count);

/**
 * Sets the initial weight of the mask-size term of every inversion
 * (`>= 0`; the presets use 1e-3).
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_init_cost(moth_distance_config *config,
                                               double init_cost);

/**
 * Sets the attack success rate a trigger must reach to count (in
 * `[0, 1]`; the presets use 0.9).
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_asr_bound(moth_distance_config *config,
                                               double asr_bound);

/**
 * Merges a JSON object into the protocol, in the form
 * `moth_distance_config_to_json` prints (for example
 * `{"inversion": {"lr": 0.05}}`); unknown keys, wrong types and
 * out-of-range values give `MOTH_STATUS_INVALID_CONFIG` and leave it
 * unchanged.
 */
MOTH_MUST_USE
moth_status moth_distance_config_set_json(moth_distance_config *config,
                                          const char *json);

/**
 * Writes the whole protocol as a JSON object into `buf` (buffer rules as
 * `moth_config_to_json`: `*needed` is the size with the NUL; pass
 * `buf = NULL, len = 0` to ask).
 */
MOTH_MUST_USE
moth_status moth_distance_config_to_json(const moth_distance_config *config,
                                         char *buf,
                                         size_t len,
                                         size_t *needed);

/**
 * Measures class distances of `classifier` (TorchScript, tensor callback
 * or host-buffer callbacks) with the protocol `config`, exactly as
 * `moth distance` does (the same core function; the same protocol, seeds
 * and samples in the same order give the same matrix, bit for bit on the
 * CPU).
 *
 * Samples: `images` `[n, C, H, W]` floating-point pixels in `[0, 1]`
 * (NCHW, row-major; a Julia `Array{Float32,4}` of size `(W, H, C, n)` is
 * this memory), `labels` `[n]` integers in `[0, num_classes)`. For each
 * seed and source class, `samples_per_class` of that class's images are
 * drawn (a seeded shuffle of their positions in `images`). Both tensors
 * stay the caller's. The classifier must return `[k, num_classes]` logits
 * (`MOTH_STATUS_WRONG_SHAPE` otherwise).
 *
 * Pairs: `pairs` holds `num_pairs` directed pairs as `(source, target)`
 * index couples (`2 * num_pairs` values); NULL with `num_pairs == 0`
 * measures the full matrix. Every class with a chosen pair as source needs
 * at least one sample. A pair's value depends on which other targets of
 * the same source are chosen (they are inverted together), never on other
 * sources.
 *
 * `progress` (may be NULL) is called with `user_data` after each source
 * class of each seed; a non-zero return stops with
 * `MOTH_STATUS_CANCELLED`. On success `*out_result` receives a new result
 * (free it with `moth_distance_result_free`). The classifier is put in
 * evaluation mode and stays locked for the whole measurement.
 */
MOTH_MUST_USE
moth_status moth_distance_measure(moth_classifier *classifier,
                                  const moth_distance_config *config,
                                  const moth_tensor *images,
                                  const moth_tensor *labels,
                                  size_t num_classes,
                                  const size_t *pairs,
                                  size_t num_pairs,
                                  moth_distance_progress_fn progress,
                                  void *user_data,
                                  moth_distance_result **out_result);

/**
 * Frees a result. `moth_distance_result_free(NULL)` does nothing.
 */
void moth_distance_result_free(moth_distance_result *result);

/**
 * Writes the number of classes `N` of the matrix.
 */
MOTH_MUST_USE
moth_status moth_distance_result_num_classes(const moth_distance_result *result,
                                             size_t *out_num_classes);

/**
 * Copies the `N x N` matrix, row-major, into `out_values` of `len` doubles
 * (at least `N * N`, else `MOTH_STATUS_BUFFER_TOO_SMALL`):
 * `out_values[a * N + b]` is the distance `a -> b`, the size
 * `C * sum(mask)` of the smallest trigger that flips class `a` to `b` at
 * the ASR bound. 0 on the diagonal, for pairs not measured, and for pairs
 * whose inversion never reached the bound (`moth_distance_result_trigger`
 * tells these apart).
 */
MOTH_MUST_USE
moth_status moth_distance_result_matrix(const moth_distance_result *result,
                                        double *out_values,
                                        size_t len);

/**
 * Writes the `[C, H, W]` input shape the triggers are for.
 */
MOTH_MUST_USE
moth_status moth_distance_result_input_shape(const moth_distance_result *result,
                                             int64_t *out_c,
                                             int64_t *out_h,
                                             int64_t *out_w);

/**
 * Copies the smallest trigger found for `source -> target`: `*out_found`
 * is false (buffers untouched) when the pair was not measured or never
 * reached the ASR bound. Otherwise `mask` receives `H * W` floats (the
 * `[1, H, W]` mask in `[0, 1]`, row-major) and `pattern` `C * H * W` floats
 * (the `[C, H, W]` pattern in `[0, 1]`, NCHW order); a stamped image is
 * `(1 - mask) * x + mask * pattern`. `mask_len` and `pattern_len` count
 * floats (`MOTH_STATUS_BUFFER_TOO_SMALL` when short); either buffer may be
 * NULL, with length 0, to skip it. `MOTH_STATUS_INVALID_ARGUMENT` for a
 * class index `>= N`.
 */
MOTH_MUST_USE
moth_status moth_distance_result_trigger(const moth_distance_result *result,
                                         size_t source,
                                         size_t target,
                                         float *mask,
                                         size_t mask_len,
                                         float *pattern,
                                         size_t pattern_len,
                                         bool *out_found);

/**
 * Writes the result as JSON into `buf` (buffer rules as
 * `moth_config_to_json`), in the form of the `distances.json` that
 * `moth distance` writes: `classes`, `values` (rows = source), `failed`
 * (measured pairs that never reached the bound), `protocol` (its one-line
 * description) and `seconds`.
 */
MOTH_MUST_USE
moth_status moth_distance_result_to_json(const moth_distance_result *result,
                                         char *buf,
                                         size_t len,
                                         size_t *needed);

/**
 * Creates a classifier from host-buffer callbacks, for a model of any
 * framework (Julia/Flux with Zygote, JAX, ONNX Runtime, hand-written C):
 * `forward` computes logits, `input_grad` the gradient of a loss with
 * respect to the inputs given its gradient with respect to the logits
 * (both required; see `moth_host_forward_fn` and
 * `moth_host_input_grad_fn` for the buffer layouts). `set_train` may be
 * NULL. `num_classes` (at least 2) is the width of the logits. moth calls
 * them on the CPU: inversion asks for one forward and one input gradient
 * per mini-batch. Training such a model is the caller's own (moth hands
 * out the stamped batch; `moth_trainer_*` trains TorchScript models only).
 * `user_data` is passed to every callback and freed with `free_user_data`
 * (may be NULL) when the classifier is freed; when this call fails, the
 * caller keeps it. Free the classifier with `moth_classifier_free`.
 */
MOTH_MUST_USE
moth_status moth_classifier_from_host(moth_host_forward_fn forward,
                                      moth_host_input_grad_fn input_grad,
                                      moth_set_train_fn set_train,
                                      void *user_data,
                                      moth_free_fn free_user_data,
                                      size_t num_classes,
                                      moth_classifier **out_classifier);

/**
 * Creates a session for a model with `num_classes` classes and inputs of
 * shape `[c, h, w]`, starting in warm-up. The configuration is copied.
 */
MOTH_MUST_USE
moth_status moth_session_new(const moth_config *config,
                             size_t num_classes,
                             int64_t c,
                             int64_t h,
                             int64_t w,
                             moth_session **out_session);

/**
 * Frees a session (and its log callback's user data).
 * `moth_session_free(NULL)` does nothing. No other call may be using the
 * session.
 */
void moth_session_free(moth_session *session);

/**
 * Runs one hardening step on the batch `x` (`[n, C, H, W]` floating-point
 * pixels in `[0, 1]`) with labels `y` (`[n]` integers): the phase's
 * inversion on `classifier` (in evaluation mode), then stamping. On success
 * `*stamped_out` receives a new tensor (same device, shape, element type
 * and order as `x`; labels are unchanged) to train on; free it with
 * `moth_tensor_free`.
 * The step report is then available from `moth_session_last_report`. The
 * step runs with autograd on, also when called from inside the caller's
 * no-grad scope; the calling thread's grad mode is restored on return.
 *
 * Flow signals (nothing was done, the session is unchanged):
 * `MOTH_STATUS_DONE` once the session finished, and
 * `MOTH_STATUS_ACCURACY_WANTED` when a clean-accuracy report is due
 * (`moth_session_report_accuracy`). Failures leave the session unchanged:
 * `MOTH_STATUS_WRONG_SHAPE`, `MOTH_STATUS_WRONG_DTYPE`,
 * `MOTH_STATUS_LABEL_OUT_OF_RANGE`, `MOTH_STATUS_INVALID_VALUE` (pixels
 * outside `[0, 1]`, NaN), `MOTH_STATUS_WRONG_SHAPE` also for a classifier
 * whose logits are not `[n, num_classes]` (another class count than the
 * session's), `MOTH_STATUS_INVALID_INPUT` for a classifier whose logits do
 * not depend on its input, `MOTH_STATUS_CALLBACK` (the forward callback
 * failed, returned detached logits, or stored its own `input` handle),
 * `MOTH_STATUS_MODEL_OUTPUT` (NaN or infinite logits made the inversion
 * diverge or would have put non-finite values into the session),
 * `MOTH_STATUS_INVALID_HANDLE`, `MOTH_STATUS_TORCH`, ...
 */
MOTH_MUST_USE
moth_status moth_session_harden_batch(moth_session *session,
                                      moth_classifier *classifier,
                                      const moth_tensor *x,
                                      const moth_tensor *y,
                                      moth_tensor **stamped_out);

/**
 * Copies the report of the last successful `moth_session_harden_batch`
 * call on this handle. `MOTH_STATUS_PHASE` when no step has run since the
 * handle was created or loaded.
 */
MOTH_MUST_USE
moth_status moth_session_last_report(const moth_session *session,
                                     moth_step_report *out_report);

/**
 * Writes whether the session waits for a clean-accuracy report before its
 * next step (always true before the first step when `accuracy_every > 0`:
 * the baseline).
 */
MOTH_MUST_USE
moth_status moth_session_wants_accuracy(const moth_session *session,
                                        bool *out_wanted);

/**
 * Reports the clean accuracy (in `[0, 1]`) of the caller's current model,
 * when one is due. The first report is the baseline. `*out_verdict`
 * receives the verdict; `out_drop` (may be NULL) the baseline minus this
 * accuracy (0 for the baseline). `MOTH_VERDICT_EXCEEDED` means the session
 * is now done: return to the last model that was within the bound.
 * `MOTH_STATUS_PHASE` when no report is due, `MOTH_STATUS_INVALID_VALUE`
 * for an accuracy outside `[0, 1]`.
 */
MOTH_MUST_USE
moth_status moth_session_report_accuracy(moth_session *session,
                                         double accuracy,
                                         moth_verdict *out_verdict,
                                         double *out_drop);

/**
 * Writes the session's phase: what its next step will do.
 */
MOTH_MUST_USE moth_status moth_session_phase(const moth_session *session, moth_phase *out_phase);

/**
 * Writes the number of steps completed.
 */
MOTH_MUST_USE moth_status moth_session_step(const moth_session *session, uint64_t *out_step);

/**
 * Writes whether the session finished.
 */
MOTH_MUST_USE moth_status moth_session_is_done(const moth_session *session, bool *out_done);

/**
 * Writes the accuracy bookkeeping (baseline, last report, pending).
 */
MOTH_MUST_USE
moth_status moth_session_accuracy(const moth_session *session,
                                  moth_accuracy *out_accuracy);

/**
 * Writes the model description the session was made for.
 */
MOTH_MUST_USE moth_status moth_session_spec(const moth_session *session, moth_spec *out_spec);

/**
 * Writes the session's configuration as JSON (the `moth_config_to_json`
 * form; buffer rules as there).
 */
MOTH_MUST_USE
moth_status moth_session_config_json(const moth_session *session,
                                     char *buf,
                                     size_t len,
                                     size_t *needed);

/**
 * Copies one `N x N` scheduler matrix (N = number of classes), row-major,
 * into `out` of `len` doubles (at least N*N, else
 * `MOTH_STATUS_BUFFER_TOO_SMALL`). `which` is a `MOTH_MATRIX_*` value.
 */
MOTH_MUST_USE
moth_status moth_session_matrix(const moth_session *session,
                                moth_matrix_kind which,
                                double *out_values,
                                size_t len);

/**
 * Copies the message of the last call on this session that did not return
 * `MOTH_STATUS_OK` into `buf` (same buffer rules as `moth_last_error`;
 * empty when none did). Never changes the stored message. Usable from
 * inside a log callback, and while another thread is in a call.
 */
MOTH_MUST_USE
moth_status moth_session_last_error(const moth_session *session,
                                    char *buf,
                                    size_t len,
                                    size_t *needed);

/**
 * Sets the session's log callback (NULL removes it); `user_data` is passed
 * to each call and freed with `free_user_data` (may be NULL) when the
 * callback is replaced or the session freed. With `callback == NULL`,
 * `free_user_data(user_data)` is called at once (when the call succeeds).
 * Like every callback moth invokes, the log callback runs with the session
 * locked: a call on the same session from inside it returns
 * `MOTH_STATUS_BUSY` (`moth_session_last_error` excepted). The session sends one info
 * line per step, accuracy verdicts, checkpoint saves, and every failed
 * call's message at error level (flow signals at info level). moth never
 * installs a process-wide logger.
 */
MOTH_MUST_USE
moth_status moth_session_set_log_callback(moth_session *session,
                                          moth_log_fn callback,
                                          void *user_data,
                                          moth_free_fn free_user_data);

/**
 * Runs this session's hardening work on the caller's CUDA stream
 * `cuda_stream` (a `cudaStream_t`) of CUDA device `device`: for the
 * duration of each `moth_session_harden_batch` call, moth makes that stream
 * and device current on the calling thread (so every moth kernel, and every
 * forward pass of a callback classifier, runs on it), then restores the
 * stream and device that were current before, whether the call succeeded
 * or not. `cuda_stream == NULL` clears the setting: calls then run on the
 * calling thread's current stream, so a C++ trainer inside its own
 * `c10::cuda::CUDAStreamGuard` needs no call at all.
 *
 * The caller keeps the stream alive while the session may use it. The
 * hardened batch is produced on the stream: work on the same stream may use
 * it at once, work on another stream must wait for it (an event). The
 * classifier must live on `cuda:<device>`
 * (`MOTH_STATUS_DEVICE` from `moth_session_harden_batch` otherwise). The
 * setting belongs to this process and is not saved in checkpoints: set it
 * again after `moth_session_load`/`moth_session_from_buffer`.
 *
 * Returns `MOTH_STATUS_UNSUPPORTED` in a process without CUDA (CPU-only
 * libtorch or machine) and `MOTH_STATUS_DEVICE` for a device that does not
 * exist or a handle that cannot be a stream (`cudaStreamLegacy`,
 * `cudaStreamPerThread`, a misaligned value); the setting is then unchanged.
 */
MOTH_MUST_USE
moth_status moth_session_set_cuda_stream(moth_session *session,
                                         int32_t device,
                                         void *cuda_stream);

/**
 * Writes the stream set with `moth_session_set_cuda_stream`: its device and
 * `cudaStream_t`, or `-1` and `NULL` when none is set (calls then run on the
 * calling thread's current stream).
 */
MOTH_MUST_USE
moth_status moth_session_cuda_stream(const moth_session *session,
                                     int32_t *out_device,
                                     void **out_stream);

/**
 * Returns the C name of a status (`"MOTH_STATUS_WRONG_SHAPE"`), or
 * `"MOTH_STATUS_UNKNOWN"` for a value that is not a status. The string is
 * static: do not free it.
 */
const char *moth_status_name(int32_t status);

/**
 * Copies the message of the last moth call made on this thread (with or
 * without a handle) that did not return `MOTH_STATUS_OK` (failures and
 * flow signals) into `buf`; successful calls leave it unchanged.
 *
 * `*needed` receives the buffer size required, including the terminating
 * NUL, whether or not `buf` was large enough; pass `buf = NULL, len = 0`
 * to query it. The message is written only when `len >= *needed`;
 * otherwise `MOTH_STATUS_BUFFER_TOO_SMALL` is returned. An empty string
 * means no call on this thread has failed. Calling this function never
 * changes the stored message. Prefer `moth_session_last_error` for calls
 * on a session: a thread-local message is lost when a runtime moves the
 * caller between threads (Go goroutines).
 */
MOTH_MUST_USE moth_status moth_last_error(char *buf, size_t len, size_t *needed);

/**
 * Creates a tensor by copying `numel(shape) * sizeof(dtype)` bytes of host
 * memory at `data` (C order, contiguous) onto `device`. `data` may be NULL
 * only when the tensor is empty; `shape` may be NULL only when `ndim` is 0
 * (a scalar). The caller keeps ownership of `data`.
 */
MOTH_MUST_USE
moth_status moth_tensor_from_buffer(const void *data,
                                    moth_dtype dtype,
                                    const int64_t *shape,
                                    size_t ndim,
                                    moth_device device,
                                    moth_tensor **out_tensor);

/**
 * Creates a tensor by copying CUDA device memory at `device_ptr`
 * (contiguous, C order, `numel(shape) * sizeof(dtype)` bytes on CUDA
 * device `device.index`) into memory moth owns on the same device, on the
 * thread's current CUDA stream. The caller keeps ownership of
 * `device_ptr`. Returns `MOTH_STATUS_UNSUPPORTED` when CUDA is not
 * available (a CPU-only machine or libtorch) and
 * `MOTH_STATUS_INVALID_ARGUMENT` for a CPU device (use
 * `moth_tensor_from_buffer`).
 */
MOTH_MUST_USE
moth_status moth_tensor_from_device_ptr(const void *device_ptr,
                                        moth_dtype dtype,
                                        const int64_t *shape,
                                        size_t ndim,
                                        moth_device device,
                                        moth_tensor **out_tensor);

/**
 * Wraps a C++ caller's `at::Tensor` (pass `&tensor` as `at_tensor`) with no
 * data copy. Ownership: moth takes its own reference to the tensor (like
 * copying an `at::Tensor`), so the caller keeps ownership of `at_tensor`
 * and may destroy it right after this call; the handle shares storage and
 * autograd history with it. The `at::Tensor` must come from the same
 * libtorch that `libmoth.so` uses. An undefined tensor is refused.
 */
MOTH_MUST_USE moth_status moth_tensor_from_at_tensor(void *at_tensor, moth_tensor **out_tensor);

/**
 * Returns, in `*out_at_tensor`, a pointer to the `at::Tensor` inside the
 * handle (C++: `*static_cast<at::Tensor*>(p)`), borrowed: it stays valid
 * while the handle lives and must not be deleted. Copy the `at::Tensor` to
 * keep it longer (that shares storage and autograd history).
 */
MOTH_MUST_USE moth_status moth_tensor_to_at_tensor(const moth_tensor *tensor, void **out_at_tensor);

/**
 * Copies the tensor's elements (C order, any device, any layout) into
 * host memory `out` of `bytes` bytes, which must hold at least
 * `numel * sizeof(dtype)` bytes (`MOTH_STATUS_BUFFER_TOO_SMALL` otherwise).
 */
MOTH_MUST_USE
moth_status moth_tensor_copy_to_buffer(const moth_tensor *tensor,
                                       void *out_data,
                                       size_t bytes);

/**
 * Writes the number of dimensions to `*out_ndim` and, when `capacity` is
 * at least that, the sizes to `shape[0..ndim]`. Returns
 * `MOTH_STATUS_BUFFER_TOO_SMALL` (with `*out_ndim` set) when `capacity` is
 * too small; `shape` may be NULL when `capacity` is 0.
 */
MOTH_MUST_USE
moth_status moth_tensor_shape(const moth_tensor *tensor,
                              int64_t *shape,
                              size_t capacity,
                              size_t *out_ndim);

/**
 * Writes the tensor's element type. Tensors of types without a
 * `MOTH_DTYPE_*` value give `MOTH_STATUS_WRONG_DTYPE`.
 */
MOTH_MUST_USE moth_status moth_tensor_dtype(const moth_tensor *tensor, moth_dtype *out_dtype);

/**
 * Writes the device the tensor lives on.
 */
MOTH_MUST_USE moth_status moth_tensor_device(const moth_tensor *tensor, moth_device *out_device);

/**
 * Frees a tensor handle (drops moth's reference; storage shared with a
 * caller's `at::Tensor` stays alive as long as that one does).
 * `moth_tensor_free(NULL)` does nothing.
 */
void moth_tensor_free(moth_tensor *tensor);

/**
 * Creates a trainer for the TorchScript `classifier` (see
 * `moth_classifier_from_torchscript`). `optimizer` names the optimiser:
 * NULL or `"hardening"` (SGD, lr 1e-4, Nesterov momentum 0.9: the
 * reference's hardening setting), `"pretraining"` (Adam, lr 1e-3), or a
 * complete JSON object, e.g.
 * `{"kind":{"Sgd":{"momentum":0.9,"nesterov":false}},"lr":0.01,"weight_decay":0}`.
 * `MOTH_STATUS_INVALID_CONFIG` for anything else,
 * `MOTH_STATUS_UNSUPPORTED` for a callback classifier,
 * `MOTH_STATUS_INVALID_INPUT` for a module without trainable parameters (a
 * traced module, whose weights are constants).
 */
MOTH_MUST_USE
moth_status moth_trainer_new(moth_classifier *classifier,
                             const char *optimizer,
                             moth_trainer **out_trainer);

/**
 * Frees a trainer (not its classifier). `moth_trainer_free(NULL)` does
 * nothing.
 */
void moth_trainer_free(moth_trainer *trainer);

/**
 * One training step on the batch `x` (`[n, C, H, W]` float pixels in
 * `[0, 1]`, typically the stamped batch of `moth_session_harden_batch`)
 * with labels `y` (`[n]` integers, the true labels): cross-entropy with the
 * model in training mode, one optimiser update, then evaluation mode
 * again. `*out_loss` (may be NULL) receives the batch's mean loss before
 * the update. A batch of the wrong shape or labels out of range change
 * nothing (`MOTH_STATUS_WRONG_SHAPE`, `MOTH_STATUS_LABEL_OUT_OF_RANGE`).
 * The step does not seed libtorch's random generator: a module with
 * dropout draws from it.
 */
MOTH_MUST_USE
moth_status moth_trainer_step(moth_trainer *trainer,
                              const moth_tensor *x,
                              const moth_tensor *y,
                              double *out_loss);

/**
 * Writes the number of steps the trainer took (counted across
 * checkpoints).
 */
MOTH_MUST_USE moth_status moth_trainer_steps(const moth_trainer *trainer, uint64_t *out_steps);

/**
 * Saves the classifier's model (the whole TorchScript module, parameters
 * and buffers) and the optimiser's state to a checkpoint file at `path`,
 * atomically. Save the session beside it (`moth_session_save`) at the same
 * step: loading both resumes the run bit for bit.
 */
MOTH_MUST_USE moth_status moth_trainer_save(const moth_trainer *trainer, const char *path);

/**
 * Serialises model and optimiser into a new buffer (the bytes
 * `moth_trainer_save` writes).
 */
MOTH_MUST_USE
moth_status moth_trainer_to_buffer(const moth_trainer *trainer,
                                   moth_buffer **out_buffer);

/**
 * Loads a checkpoint written by `moth_trainer_save`: the TorchScript
 * `classifier` (for the same input shape and class count) takes the saved
 * model's parameters and buffers, and `*out_trainer` receives a trainer
 * with the saved optimiser state, bound to it. A missing file gives
 * `MOTH_STATUS_IO`; a corrupted one or one of another kind (a session
 * checkpoint) `MOTH_STATUS_CHECKPOINT`, and the classifier is unchanged.
 */
MOTH_MUST_USE
moth_status moth_trainer_load(moth_classifier *classifier,
                              const char *path,
                              moth_trainer **out_trainer);

/**
 * `moth_trainer_load` from the `len` bytes at `data` (made by
 * `moth_trainer_to_buffer`); the caller keeps `data`.
 */
MOTH_MUST_USE
moth_status moth_trainer_from_buffer(moth_classifier *classifier,
                                     const uint8_t *data,
                                     size_t len,
                                     moth_trainer **out_trainer);

/**
 * The library's version, `"MAJOR.MINOR.PATCH"`, as a static NUL-terminated
 * string (do not free it).
 */
const char *moth_version(void);

/**
 * The ABI version of the loaded library; compare it with
 * `MOTH_ABI_VERSION` from the header a program was compiled with.
 */
uint32_t moth_abi_version(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* MOTH_H */
