/* A hostile host: calls every function of moth.h with NULL, freed,
 * foreign-type and wrong-phase arguments and with misbehaving callbacks, and
 * checks that each returns the status the header documents (and leaves a
 * message). Built and run by tests/c_abi_hostile.rs, once with
 * -fsanitize=address,undefined and once under valgrind; both must find 0
 * errors. It needs no autograd of its own: the positive paths use the
 * TorchScript model given as argv[1] (1x28x28 inputs, 10 classes).
 *
 * Usage: hostile MODEL.pt SCRATCH_DIR
 * Prints one line per failed check and "hostile: N checks, 0 failed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moth.h"

static int checks;
static int failed;

/* The message moth left for the last failed call on this thread. */
static const char *last_error(void) {
    static char buf[4096];
    size_t needed = 0;
    if (moth_last_error(buf, sizeof buf, &needed) != MOTH_STATUS_OK) {
        return "(moth_last_error failed)";
    }
    return buf;
}

/* Checks a status and, for a failure, that the message mentions `needle`. */
static void check(int line, const char *what, moth_status got, moth_status want,
                  const char *needle) {
    checks++;
    if (got != want) {
        failed++;
        printf("line %d: %s returned %s, expected %s (%s)\n", line, what, moth_status_name(got),
               moth_status_name(want), last_error());
        return;
    }
    if (want != MOTH_STATUS_OK && needle && !strstr(last_error(), needle)) {
        failed++;
        printf("line %d: %s: message '%s' lacks '%s'\n", line, what, last_error(), needle);
    }
}

#define EXPECT(call, want, needle) check(__LINE__, #call, (call), (want), (needle))
#define TRUE_OR_FAIL(cond)                                                                 \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failed++;                                                                      \
            printf("line %d: %s is false\n", __LINE__, #cond);                            \
        }                                                                                  \
    } while (0)

#define DEAD "already freed"
#define NULLARG "is NULL"

static const moth_device CPU = {MOTH_DEVICE_TYPE_CPU, 0};
enum { N = 10, SIDE = 28 };

/* What the test's objects are: live ones, freed ones, and live ones of
 * another type passed where a type is expected. */
typedef struct {
    moth_config *config;
    moth_session *session;
    moth_classifier *model;
    moth_tensor *x, *y;
    moth_buffer *buffer;
    moth_config *dead_config;
    moth_session *dead_session;
    moth_classifier *dead_model;
    moth_tensor *dead_tensor;
    moth_buffer *dead_buffer;
} objects;

static moth_tensor *make_batch(moth_dtype dtype) {
    static float f[N * SIDE * SIDE];
    static double d[N * SIDE * SIDE];
    static int64_t labels[N];
    int64_t shape[4] = {N, 1, SIDE, SIDE};
    moth_tensor *t = NULL;
    if (dtype == MOTH_DTYPE_INT64) {
        for (int i = 0; i < N; i++) labels[i] = i;
        if (moth_tensor_from_buffer(labels, dtype, shape, 1, CPU, &t) != MOTH_STATUS_OK) abort();
        return t;
    }
    for (int i = 0; i < N * SIDE * SIDE; i++) f[i] = (float)(d[i] = (i % 7) / 7.0);
    const void *data = dtype == MOTH_DTYPE_FLOAT64 ? (const void *)d : (const void *)f;
    if (moth_tensor_from_buffer(data, dtype, shape, 4, CPU, &t) != MOTH_STATUS_OK) abort();
    return t;
}

static const char *QUICK =
    "{\"seed\": 1, \"accuracy_every\": 0, \"warmup\": {\"budget\": {\"steps\": 1},"
    " \"pool_per_class\": 1}, \"first\": {\"steps\": 1}, \"later\": {\"steps\": 1}}";

static moth_session *new_session(const char *json) {
    moth_config *c = NULL;
    moth_session *s = NULL;
    if (moth_config_new(&c) != MOTH_STATUS_OK) abort();
    if (moth_config_set_json(c, json) != MOTH_STATUS_OK) abort();
    if (moth_session_new(c, N, 1, SIDE, SIDE, &s) != MOTH_STATUS_OK) abort();
    moth_config_free(c);
    return s;
}

static int32_t hostile_forward(void *user, const moth_tensor *input, moth_tensor **out);

static void make_objects(objects *o, const char *model_path) {
    memset(o, 0, sizeof *o);
    EXPECT(moth_config_new(&o->config), MOTH_STATUS_OK, NULL);
    o->session = new_session(QUICK);
    EXPECT(moth_classifier_from_torchscript(model_path, 1, SIDE, SIDE, CPU, &o->model),
           MOTH_STATUS_OK, NULL);
    o->x = make_batch(MOTH_DTYPE_FLOAT32);
    o->y = make_batch(MOTH_DTYPE_INT64);
    EXPECT(moth_session_to_buffer(o->session, &o->buffer), MOTH_STATUS_OK, NULL);
    EXPECT(moth_config_new(&o->dead_config), MOTH_STATUS_OK, NULL);
    moth_config_free(o->dead_config);
    o->dead_session = new_session("{}");
    moth_session_free(o->dead_session);
    EXPECT(moth_classifier_from_callback(hostile_forward, NULL, NULL, NULL, CPU, &o->dead_model),
           MOTH_STATUS_OK, NULL);
    moth_classifier_free(o->dead_model);
    o->dead_tensor = make_batch(MOTH_DTYPE_INT64);
    moth_tensor_free(o->dead_tensor);
    EXPECT(moth_session_to_buffer(o->session, &o->dead_buffer), MOTH_STATUS_OK, NULL);
    moth_buffer_free(o->dead_buffer);
}

/* The same call with the handle argument NULL, freed, and of another type. */
#define BAD_HANDLES(call_with, null_h, dead_h, foreign_h, what)                          \
    do {                                                                                   \
        EXPECT(call_with(null_h), MOTH_STATUS_NULL_POINTER, NULLARG);                     \
        EXPECT(call_with(dead_h), MOTH_STATUS_INVALID_HANDLE, DEAD);                      \
        EXPECT(call_with(foreign_h), MOTH_STATUS_INVALID_HANDLE, what);                   \
    } while (0)

static void config_functions(objects *o) {
    size_t needed = 0;
    char buf[8];
    moth_config *foreign = (moth_config *)o->x;
#define SET_JSON(c) moth_config_set_json(c, "{}")
    BAD_HANDLES(SET_JSON, NULL, o->dead_config, foreign, "a tensor handle");
#define SET_INT(c) moth_config_set_int(c, "seed", 1)
    BAD_HANDLES(SET_INT, NULL, o->dead_config, foreign, "a tensor handle");
#define SET_UINT(c) moth_config_set_uint(c, "seed", 1)
    BAD_HANDLES(SET_UINT, NULL, o->dead_config, foreign, "a tensor handle");
#define SET_DOUBLE(c) moth_config_set_double(c, "portion", 0.5)
    BAD_HANDLES(SET_DOUBLE, NULL, o->dead_config, foreign, "a tensor handle");
#define SET_PRESET(c) moth_config_set_preset(c, "default")
    BAD_HANDLES(SET_PRESET, NULL, o->dead_config, foreign, "a tensor handle");
#define SET_STRING(c) moth_config_set_string(c, "method", "Moth")
    BAD_HANDLES(SET_STRING, NULL, o->dead_config, foreign, "a tensor handle");
#define TO_JSON(c) moth_config_to_json(c, buf, sizeof buf, &needed)
    BAD_HANDLES(TO_JSON, NULL, o->dead_config, foreign, "a tensor handle");
    EXPECT(moth_config_new(NULL), MOTH_STATUS_NULL_POINTER, NULLARG);
    EXPECT(moth_config_set_json(o->config, NULL), MOTH_STATUS_NULL_POINTER, NULLARG);
    EXPECT(moth_config_to_json(o->config, buf, sizeof buf, &needed),
           MOTH_STATUS_BUFFER_TOO_SMALL, "too small");
    TRUE_OR_FAIL(needed > sizeof buf);
}

static void session_getters(objects *o) {
    moth_session *foreign = (moth_session *)o->config;
    moth_session *dead = o->dead_session;
    bool b;
    uint64_t step;
    moth_phase phase;
    moth_accuracy acc;
    moth_spec spec;
    moth_step_report report;
    double values[N * N];
    char buf[64];
    size_t needed;
    int32_t device;
    void *stream;
    moth_buffer *buffer;
#define WANTS(s) moth_session_wants_accuracy(s, &b)
    BAD_HANDLES(WANTS, NULL, dead, foreign, "a config handle");
#define PHASE(s) moth_session_phase(s, &phase)
    BAD_HANDLES(PHASE, NULL, dead, foreign, "a config handle");
#define STEP(s) moth_session_step(s, &step)
    BAD_HANDLES(STEP, NULL, dead, foreign, "a config handle");
#define DONE(s) moth_session_is_done(s, &b)
    BAD_HANDLES(DONE, NULL, dead, foreign, "a config handle");
#define ACC(s) moth_session_accuracy(s, &acc)
    BAD_HANDLES(ACC, NULL, dead, foreign, "a config handle");
#define SPEC(s) moth_session_spec(s, &spec)
    BAD_HANDLES(SPEC, NULL, dead, foreign, "a config handle");
#define REPORT(s) moth_session_last_report(s, &report)
    BAD_HANDLES(REPORT, NULL, dead, foreign, "a config handle");
#define CFG_JSON(s) moth_session_config_json(s, buf, sizeof buf, &needed)
    BAD_HANDLES(CFG_JSON, NULL, dead, foreign, "a config handle");
#define MATRIX(s) moth_session_matrix(s, MOTH_MATRIX_UNIV, values, N * N)
    BAD_HANDLES(MATRIX, NULL, dead, foreign, "a config handle");
    /* moth_session_last_error records no message of its own. */
    EXPECT(moth_session_last_error(NULL, buf, sizeof buf, &needed), MOTH_STATUS_NULL_POINTER,
           NULL);
    EXPECT(moth_session_last_error(dead, buf, sizeof buf, &needed), MOTH_STATUS_INVALID_HANDLE,
           NULL);
    EXPECT(moth_session_last_error(foreign, buf, sizeof buf, &needed),
           MOTH_STATUS_INVALID_HANDLE, NULL);
#define SET_LOG(s) moth_session_set_log_callback(s, NULL, NULL, NULL)
    BAD_HANDLES(SET_LOG, NULL, dead, foreign, "a config handle");
#define SET_STREAM(s) moth_session_set_cuda_stream(s, 0, NULL)
    BAD_HANDLES(SET_STREAM, NULL, dead, foreign, "a config handle");
#define GET_STREAM(s) moth_session_cuda_stream(s, &device, &stream)
    BAD_HANDLES(GET_STREAM, NULL, dead, foreign, "a config handle");
#define SAVE(s) moth_session_save(s, "/nonexistent/never")
    BAD_HANDLES(SAVE, NULL, dead, foreign, "a config handle");
#define TO_BUFFER(s) moth_session_to_buffer(s, &buffer)
    BAD_HANDLES(TO_BUFFER, NULL, dead, foreign, "a config handle");
    EXPECT(moth_session_report_accuracy(o->session, 0.5, NULL, NULL), MOTH_STATUS_NULL_POINTER,
           NULLARG);
    moth_verdict v;
#define REPORT_ACC(s) moth_session_report_accuracy(s, 0.5, &v, NULL)
    BAD_HANDLES(REPORT_ACC, NULL, dead, foreign, "a config handle");
    /* Wrong phase: nothing ran yet, no report is due. */
    EXPECT(moth_session_last_report(o->session, &report), MOTH_STATUS_PHASE, "no step");
    EXPECT(moth_session_report_accuracy(o->session, 0.5, &v, NULL), MOTH_STATUS_PHASE,
           "no accuracy report is due");
    EXPECT(moth_session_matrix(o->session, 99, values, N * N), MOTH_STATUS_INVALID_ARGUMENT,
           "unknown matrix");
    moth_status st = moth_session_set_cuda_stream(o->session, 0, (void *)(uintptr_t)0x1000);
    TRUE_OR_FAIL(st == MOTH_STATUS_UNSUPPORTED || st == MOTH_STATUS_DEVICE);
    EXPECT(moth_session_new((moth_config *)o->session, N, 1, SIDE, SIDE, &foreign),
           MOTH_STATUS_INVALID_HANDLE, "a session handle");
    TRUE_OR_FAIL(foreign == NULL);
    EXPECT(moth_session_new(o->dead_config, N, 1, SIDE, SIDE, &foreign),
           MOTH_STATUS_INVALID_HANDLE, DEAD);
    EXPECT(moth_session_load(NULL, 0, 0, 0, 0, &foreign), MOTH_STATUS_NULL_POINTER, NULLARG);
    EXPECT(moth_session_from_buffer(NULL, 3, 0, 0, 0, 0, &foreign), MOTH_STATUS_NULL_POINTER,
           NULLARG);
}

static void tensor_functions(objects *o) {
    moth_tensor *foreign = (moth_tensor *)o->session;
    moth_tensor *dead = o->dead_tensor;
    void *p;
    int64_t shape[4];
    size_t ndim;
    moth_dtype dtype;
    moth_device device;
    float out[4];
#define TO_AT(t) moth_tensor_to_at_tensor(t, &p)
    BAD_HANDLES(TO_AT, NULL, dead, foreign, "a session handle");
#define COPY(t) moth_tensor_copy_to_buffer(t, out, sizeof out)
    BAD_HANDLES(COPY, NULL, dead, foreign, "a session handle");
#define SHAPE(t) moth_tensor_shape(t, shape, 4, &ndim)
    BAD_HANDLES(SHAPE, NULL, dead, foreign, "a session handle");
#define DTYPE(t) moth_tensor_dtype(t, &dtype)
    BAD_HANDLES(DTYPE, NULL, dead, foreign, "a session handle");
#define DEVICE(t) moth_tensor_device(t, &device)
    BAD_HANDLES(DEVICE, NULL, dead, foreign, "a session handle");
    moth_tensor *t = NULL;
    int64_t dims[1] = {4};
    EXPECT(moth_tensor_from_buffer(out, 99, dims, 1, CPU, &t), MOTH_STATUS_INVALID_ARGUMENT,
           "unknown dtype");
    EXPECT(moth_tensor_from_buffer(NULL, MOTH_DTYPE_FLOAT32, dims, 1, CPU, &t),
           MOTH_STATUS_NULL_POINTER, NULLARG);
    EXPECT(moth_tensor_from_device_ptr(out, MOTH_DTYPE_FLOAT32, dims, 1, CPU, &t),
           MOTH_STATUS_INVALID_ARGUMENT, "CUDA memory");
    EXPECT(moth_tensor_from_at_tensor(NULL, &t), MOTH_STATUS_NULL_POINTER, NULLARG);
    EXPECT(moth_tensor_copy_to_buffer(o->x, out, sizeof out), MOTH_STATUS_BUFFER_TOO_SMALL,
           "too small");
    EXPECT(moth_tensor_shape(o->x, shape, 4, &ndim), MOTH_STATUS_OK, NULL);
    TRUE_OR_FAIL(ndim == 4 && shape[0] == N && shape[3] == SIDE);
}

static void buffer_and_classifier_functions(objects *o, const char *model_path,
                                            const char *scratch) {
    const uint8_t *data;
    size_t len;
#define BUF_DATA(b) moth_buffer_data(b, &data, &len)
    BAD_HANDLES(BUF_DATA, NULL, o->dead_buffer, (moth_buffer *)o->model, "a classifier handle");
    moth_classifier *foreign = (moth_classifier *)o->buffer;
    moth_classifier *dead = o->dead_model;
    moth_tensor *logits = NULL;
    char path[1024];
#define SET_TRAIN(c) moth_classifier_set_train(c, false)
    BAD_HANDLES(SET_TRAIN, NULL, dead, foreign, "a buffer handle");
#define FORWARD(c) moth_classifier_forward(c, o->x, &logits)
    BAD_HANDLES(FORWARD, NULL, dead, foreign, "a buffer handle");
    snprintf(path, sizeof path, "%s/hostile-saved.pt", scratch);
#define CLF_SAVE(c) moth_classifier_save(c, path)
    BAD_HANDLES(CLF_SAVE, NULL, dead, foreign, "a buffer handle");
    EXPECT(moth_classifier_forward(o->model, o->dead_tensor, &logits), MOTH_STATUS_INVALID_HANDLE,
           DEAD);
    EXPECT(moth_classifier_forward(o->model, o->x, &logits), MOTH_STATUS_OK, NULL);
    moth_tensor_free(logits);
    /* Statuses of files: a folder is no model, a missing folder no place. */
    moth_classifier *c = NULL;
    EXPECT(moth_classifier_from_torchscript(scratch, 1, SIDE, SIDE, CPU, &c), MOTH_STATUS_IO,
           "Is a directory");
    EXPECT(moth_classifier_from_torchscript(model_path, 0, SIDE, SIDE, CPU, &c),
           MOTH_STATUS_INVALID_ARGUMENT, "must be positive");
    snprintf(path, sizeof path, "%s/no-such-folder/m.pt", scratch);
    EXPECT(moth_classifier_save(o->model, path), MOTH_STATUS_IO, "no-such-folder");
    snprintf(path, sizeof path, "%s/no-such-folder/s.ckpt", scratch);
    EXPECT(moth_session_save(o->session, path), MOTH_STATUS_IO, "no-such-folder");
    EXPECT(moth_classifier_from_callback(NULL, NULL, NULL, NULL, CPU, &c),
           MOTH_STATUS_NULL_POINTER, NULLARG);
}

/* --- forward callbacks that misbehave ----------------------------------- */

enum { STORE_INPUT, STORE_FOREIGN, STORE_FREED, STORE_COPY, FAIL, STORE_NOTHING };
static moth_config *callback_foreign;

static int32_t hostile_forward(void *user, const moth_tensor *input, moth_tensor **out) {
    int mode = *(int *)user;
    moth_tensor *t = NULL;
    float zeros[N * N] = {0};
    int64_t shape[2] = {N, N};
    int64_t dims[4];
    size_t ndim = 0;
    switch (mode) {
    case STORE_INPUT:
        *out = (moth_tensor *)input;
        return 0;
    case STORE_FOREIGN:
        *out = (moth_tensor *)callback_foreign;
        return 0;
    case STORE_FREED:
        if (moth_tensor_from_buffer(zeros, MOTH_DTYPE_FLOAT32, shape, 2, CPU, &t)) return 9;
        moth_tensor_free(t);
        *out = t;
        return 0;
    case STORE_COPY: /* logits of the right shape, without an autograd graph */
        if (moth_tensor_shape(input, dims, 4, &ndim) || ndim != 4) return 9;
        shape[0] = dims[0];
        if (moth_tensor_from_buffer(zeros, MOTH_DTYPE_FLOAT32, shape, 2, CPU, out)) return 9;
        return 0;
    case FAIL:
        if (moth_callback_set_error("the model is on fire") != MOTH_STATUS_OK) return 9;
        return 3;
    default:
        return 0;
    }
}

static int frees;
static void count_free(void *user) {
    (void)user;
    frees++;
}

static void callbacks(objects *o) {
    static const struct {
        int mode;
        const char *needle;
    } cases[] = {
        {STORE_INPUT, "input handle"},       {STORE_FOREIGN, "a config handle"},
        {STORE_FREED, DEAD},                 {STORE_COPY, "do not require gradients"},
        {FAIL, "the model is on fire"},      {STORE_NOTHING, "left logits_out NULL"},
    };
    EXPECT(moth_config_new(&callback_foreign), MOTH_STATUS_OK, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int mode = cases[i].mode;
        moth_classifier *c = NULL;
        moth_tensor *out = NULL;
        moth_session *s = new_session(QUICK);
        EXPECT(moth_classifier_from_callback(hostile_forward, NULL, &mode, count_free, CPU, &c),
               MOTH_STATUS_OK, NULL);
        EXPECT(moth_session_harden_batch(s, c, o->x, o->y, &out), MOTH_STATUS_CALLBACK,
               cases[i].needle);
        TRUE_OR_FAIL(out == NULL);
        uint64_t step = 99;
        EXPECT(moth_session_step(s, &step), MOTH_STATUS_OK, NULL);
        TRUE_OR_FAIL(step == 0);
        moth_classifier_free(c);
        moth_session_free(s);
    }
    /* The foreign handle a callback stored is still the caller's, alive. */
    EXPECT(moth_config_set_int(callback_foreign, "seed", 2), MOTH_STATUS_OK, NULL);
    moth_config_free(callback_foreign);
    TRUE_OR_FAIL(frees == 6);
}

/* --- the log callback --------------------------------------------------- */

typedef struct {
    moth_session *session;
    moth_classifier *model;
    moth_tensor *x, *y;
    moth_status reentry;
    int calls;
} log_state;

static void reentering_log(moth_log_level level, const char *message, void *user) {
    log_state *l = user;
    moth_tensor *out = NULL;
    (void)message;
    l->calls++;
    if (level == MOTH_LOG_LEVEL_ERROR && l->reentry == MOTH_STATUS_OK) {
        l->reentry = moth_session_harden_batch(l->session, l->model, l->x, l->y, &out);
        moth_tensor_free(out);
    }
}

static void log_callbacks(objects *o) {
    frees = 0;
    int ud = 0;
    EXPECT(moth_session_set_log_callback(o->session, NULL, &ud, count_free), MOTH_STATUS_OK,
           NULL);
    TRUE_OR_FAIL(frees == 1);
    log_state l = {o->session, o->model, o->x, o->y, MOTH_STATUS_OK, 0};
    EXPECT(moth_session_set_log_callback(o->session, reentering_log, &l, NULL), MOTH_STATUS_OK,
           NULL);
    moth_verdict v;
    EXPECT(moth_session_report_accuracy(o->session, 0.5, &v, NULL), MOTH_STATUS_PHASE, NULL);
    TRUE_OR_FAIL(l.calls >= 1);
    check(__LINE__, "harden_batch from inside the log callback", l.reentry, MOTH_STATUS_BUSY,
          "in use");
    uint64_t step = 99;
    EXPECT(moth_session_step(o->session, &step), MOTH_STATUS_OK, NULL);
    TRUE_OR_FAIL(step == 0);
    EXPECT(moth_session_set_log_callback(o->session, NULL, NULL, NULL), MOTH_STATUS_OK, NULL);
}

/* --- the positive path and the phase signals ----------------------------- */

static void steps(objects *o, const char *scratch) {
    moth_tensor *out = NULL;
    moth_dtype dtype = -1;
    moth_tensor *x64 = make_batch(MOTH_DTYPE_FLOAT64);
    EXPECT(moth_session_harden_batch(o->session, o->model, x64, o->y, &out), MOTH_STATUS_OK,
           NULL);
    EXPECT(moth_tensor_dtype(out, &dtype), MOTH_STATUS_OK, NULL);
    TRUE_OR_FAIL(dtype == MOTH_DTYPE_FLOAT64);
    moth_tensor_free(out);
    moth_tensor_free(x64);
    moth_step_report report;
    EXPECT(moth_session_last_report(o->session, &report), MOTH_STATUS_OK, NULL);
    TRUE_OR_FAIL(report.step == 0);
    /* Handles in the wrong places of a step. */
    EXPECT(moth_session_harden_batch(o->session, o->model, o->y, o->x, &out),
           MOTH_STATUS_WRONG_SHAPE, "batch must be");
    EXPECT(moth_session_harden_batch(o->session, o->model, o->dead_tensor, o->y, &out),
           MOTH_STATUS_INVALID_HANDLE, DEAD);
    EXPECT(moth_session_harden_batch(o->session, (moth_classifier *)o->session, o->x, o->y, &out),
           MOTH_STATUS_INVALID_HANDLE, "a session handle");
    EXPECT(moth_session_harden_batch((moth_session *)o->model, o->model, o->x, o->y, &out),
           MOTH_STATUS_INVALID_HANDLE, "a classifier handle");
    EXPECT(moth_session_harden_batch(o->dead_session, o->model, o->x, o->y, &out),
           MOTH_STATUS_INVALID_HANDLE, DEAD);
    EXPECT(moth_session_harden_batch(o->session, o->model, o->x, o->y, NULL),
           MOTH_STATUS_NULL_POINTER, NULLARG);
    /* A report is due: the step is refused with the flow signal. */
    moth_session *due = new_session("{\"accuracy_every\": 1}");
    EXPECT(moth_session_harden_batch(due, o->model, o->x, o->y, &out),
           MOTH_STATUS_ACCURACY_WANTED, "report is due");
    moth_session_free(due);
    /* Save, load and compare. */
    char path[1024];
    snprintf(path, sizeof path, "%s/hostile.ckpt", scratch);
    EXPECT(moth_session_save(o->session, path), MOTH_STATUS_OK, NULL);
    moth_session *back = NULL;
    EXPECT(moth_session_load(path, N, 1, SIDE, SIDE, &back), MOTH_STATUS_OK, NULL);
    uint64_t step = 0;
    EXPECT(moth_session_step(back, &step), MOTH_STATUS_OK, NULL);
    TRUE_OR_FAIL(step == 1);
    moth_session *other = NULL;
    EXPECT(moth_session_load(path, 3, 1, SIDE, SIDE, &other), MOTH_STATUS_CHECKPOINT, "classes");
    const uint8_t *data = NULL;
    size_t len = 0;
    EXPECT(moth_buffer_data(o->buffer, &data, &len), MOTH_STATUS_OK, NULL);
    moth_session *from = NULL;
    EXPECT(moth_session_from_buffer(data, len / 2, 0, 0, 0, 0, &from), MOTH_STATUS_CHECKPOINT,
           NULL);
    moth_session_free(from); /* NULL: nothing */
    moth_session_free(back);
    moth_session_free(back); /* a double free does nothing */
    TRUE_OR_FAIL(strstr(last_error(), DEAD) != NULL);
}

/* Frees of freed and foreign handles do nothing; the real objects live on. */
static void frees_of_bad_handles(objects *o) {
    moth_config_free(o->dead_config);
    TRUE_OR_FAIL(strstr(last_error(), DEAD) != NULL);
    moth_session_free(o->dead_session);
    moth_classifier_free(o->dead_model);
    moth_tensor_free(o->dead_tensor);
    moth_buffer_free(o->dead_buffer);
    moth_session_free((moth_session *)o->config);
    TRUE_OR_FAIL(strstr(last_error(), "a config handle") != NULL);
    moth_config_free((moth_config *)o->session);
    moth_tensor_free((moth_tensor *)o->buffer);
    moth_buffer_free((moth_buffer *)o->model);
    moth_classifier_free((moth_classifier *)o->x);
    uint64_t step;
    EXPECT(moth_session_step(o->session, &step), MOTH_STATUS_OK, NULL);
    EXPECT(moth_config_set_int(o->config, "seed", 3), MOTH_STATUS_OK, NULL);
    EXPECT(moth_classifier_set_train(o->model, false), MOTH_STATUS_OK, NULL);
    moth_dtype dtype;
    EXPECT(moth_tensor_dtype(o->x, &dtype), MOTH_STATUS_OK, NULL);
    const uint8_t *data;
    size_t len;
    EXPECT(moth_buffer_data(o->buffer, &data, &len), MOTH_STATUS_OK, NULL);
}

static void free_objects(objects *o) {
    moth_config_free(o->config);
    moth_session_free(o->session);
    moth_classifier_free(o->model);
    moth_tensor_free(o->x);
    moth_tensor_free(o->y);
    moth_buffer_free(o->buffer);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.pt SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    objects o;
    TRUE_OR_FAIL(moth_abi_version() == MOTH_ABI_VERSION);
    TRUE_OR_FAIL(strlen(moth_version()) > 0);
    TRUE_OR_FAIL(strcmp(moth_status_name(MOTH_STATUS_INVALID_HANDLE),
                        "MOTH_STATUS_INVALID_HANDLE") == 0);
    TRUE_OR_FAIL(strcmp(moth_status_name(12345), "MOTH_STATUS_UNKNOWN") == 0);
    EXPECT(moth_last_error(NULL, 0, NULL), MOTH_STATUS_NULL_POINTER, NULL);
    EXPECT(moth_callback_set_error(NULL), MOTH_STATUS_OK, NULL);
    make_objects(&o, argv[1]);
    config_functions(&o);
    session_getters(&o);
    tensor_functions(&o);
    buffer_and_classifier_functions(&o, argv[1], argv[2]);
    callbacks(&o);
    log_callbacks(&o);
    steps(&o, argv[2]);
    frees_of_bad_handles(&o);
    free_objects(&o);
    printf("hostile: %d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
