/* A hostile host, for the exports of distances, host classifiers and the
 * trainer (tests/c/hostile.c covers the rest): every one with NULL, freed and
 * foreign-type handles, bad sizes and bad values, built with
 * AddressSanitizer and UBSan by tests/c_abi_hostile.rs.
 * usage: hostile_product MODEL.pt SCRATCH_DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moth.h"

static int checks, failed;

static const char *last_error(void) {
    static char buf[4096];
    size_t needed = 0;
    if (moth_last_error(buf, sizeof buf, &needed) != MOTH_STATUS_OK) return "(no message)";
    return buf;
}

static void check(int line, const char *what, moth_status got, moth_status want,
                  const char *needle) {
    checks++;
    if (got != want) {
        failed++;
        printf("line %d: %s returned %s, expected %s (%s)\n", line, what, moth_status_name(got),
               moth_status_name(want), last_error());
    } else if (want != MOTH_STATUS_OK && needle && !strstr(last_error(), needle)) {
        failed++;
        printf("line %d: %s: message '%s' lacks '%s'\n", line, what, last_error(), needle);
    }
}

#define EXPECT(call, want, needle) check(__LINE__, #call, (call), (want), (needle))
#define BAD_HANDLES(call_with, dead_h, foreign_h, what)                                     \
    do {                                                                                   \
        EXPECT(call_with(NULL), MOTH_STATUS_NULL_POINTER, "is NULL");                     \
        EXPECT(call_with(dead_h), MOTH_STATUS_INVALID_HANDLE, "already freed");           \
        EXPECT(call_with(foreign_h), MOTH_STATUS_INVALID_HANDLE, what);                   \
    } while (0)

enum { N = 10, SIDE = 28 };
static const moth_device CPU = {MOTH_DEVICE_TYPE_CPU, 0};

static int32_t fwd(void *u, const float *x, size_t n, size_t c, size_t h, size_t w, float *l,
                   size_t k) {
    (void)u, (void)x, (void)c, (void)h, (void)w;
    for (size_t i = 0; i < n * k; i++) l[i] = 0;
    return 0;
}

static int32_t nan_fwd(void *u, const float *x, size_t n, size_t c, size_t h, size_t w, float *l,
                       size_t k) {
    (void)u, (void)x, (void)c, (void)h, (void)w;
    for (size_t i = 0; i < n * k; i++) l[i] = (float)(0.0 / 0.0);
    return 0;
}

static int32_t grad(void *u, const float *x, size_t n, size_t c, size_t h, size_t w,
                    const float *g, size_t k, float *gx) {
    (void)u, (void)x, (void)g, (void)k;
    memset(gx, 0, n * c * h * w * sizeof(float));
    return 0;
}

static void free_counter(void *u) { ++*(int *)u; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.pt SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    /* Unbuffered, so that every line is out before a sanitizer ends the run. */
    setvbuf(stdout, NULL, _IONBF, 0);
    static float px[N * SIDE * SIDE];
    int64_t labels[N];
    for (int i = 0; i < N * SIDE * SIDE; i++) px[i] = (float)(i % 7) / 7.0f;
    for (int i = 0; i < N; i++) labels[i] = i;
    int64_t xs[4] = {N, 1, SIDE, SIDE}, ys[1] = {N};
    moth_tensor *x = NULL, *y = NULL, *dead_tensor = NULL;
    EXPECT(moth_tensor_from_buffer(px, MOTH_DTYPE_FLOAT32, xs, 4, CPU, &x), MOTH_STATUS_OK, NULL);
    EXPECT(moth_tensor_from_buffer(labels, MOTH_DTYPE_INT64, ys, 1, CPU, &y), MOTH_STATUS_OK,
           NULL);
    EXPECT(moth_tensor_from_buffer(labels, MOTH_DTYPE_INT64, ys, 1, CPU, &dead_tensor),
           MOTH_STATUS_OK, NULL);
    moth_tensor_free(dead_tensor);
    moth_classifier *model = NULL, *dead_model = NULL;
    EXPECT(moth_classifier_from_torchscript(argv[1], 1, SIDE, SIDE, CPU, &model), MOTH_STATUS_OK,
           NULL);
    EXPECT(moth_classifier_from_host(fwd, grad, NULL, NULL, NULL, N, &dead_model),
           MOTH_STATUS_OK, NULL);
    moth_classifier_free(dead_model);

    /* Protocols. */
    moth_distance_config *cfg = NULL, *dead_cfg = NULL;
    moth_distance_config *foreign_cfg = (moth_distance_config *)x;
    EXPECT(moth_distance_config_new("paper", &cfg), MOTH_STATUS_OK, NULL);
    EXPECT(moth_distance_config_new("quick", &dead_cfg), MOTH_STATUS_OK, NULL);
    moth_distance_config_free(dead_cfg);
    moth_distance_config *refused = NULL;
    EXPECT(moth_distance_config_new("fast", &refused), MOTH_STATUS_INVALID_CONFIG, "quick");
    EXPECT(moth_distance_config_new(NULL, &refused), MOTH_STATUS_NULL_POINTER, "is NULL");
    EXPECT(moth_distance_config_new("quick", NULL), MOTH_STATUS_NULL_POINTER, "is NULL");
    uint64_t seed = 4;
    char buf[16];
    size_t needed = 0;
#define SAMPLES(c) moth_distance_config_set_samples(c, 2)
    BAD_HANDLES(SAMPLES, dead_cfg, foreign_cfg, "a tensor handle");
#define STEPS(c) moth_distance_config_set_steps(c, 2)
    BAD_HANDLES(STEPS, dead_cfg, foreign_cfg, "a tensor handle");
#define SEEDS(c) moth_distance_config_set_seeds(c, &seed, 1)
    BAD_HANDLES(SEEDS, dead_cfg, foreign_cfg, "a tensor handle");
#define COST(c) moth_distance_config_set_init_cost(c, 0.01)
    BAD_HANDLES(COST, dead_cfg, foreign_cfg, "a tensor handle");
#define ASR(c) moth_distance_config_set_asr_bound(c, 0.5)
    BAD_HANDLES(ASR, dead_cfg, foreign_cfg, "a tensor handle");
#define DJSON(c) moth_distance_config_set_json(c, "{}")
    BAD_HANDLES(DJSON, dead_cfg, foreign_cfg, "a tensor handle");
#define DTO_JSON(c) moth_distance_config_to_json(c, buf, sizeof buf, &needed)
    BAD_HANDLES(DTO_JSON, dead_cfg, foreign_cfg, "a tensor handle");
    EXPECT(moth_distance_config_set_samples(cfg, 0), MOTH_STATUS_INVALID_CONFIG, "at least 1");
    EXPECT(moth_distance_config_set_steps(cfg, 0), MOTH_STATUS_INVALID_CONFIG, "at least 1");
    EXPECT(moth_distance_config_set_seeds(cfg, NULL, 1), MOTH_STATUS_NULL_POINTER, "is NULL");
    EXPECT(moth_distance_config_set_seeds(cfg, &seed, 0), MOTH_STATUS_INVALID_CONFIG, "seed");
    EXPECT(moth_distance_config_set_init_cost(cfg, -1), MOTH_STATUS_INVALID_CONFIG, "init_cost");
    EXPECT(moth_distance_config_set_asr_bound(cfg, 0.0 / 0.0), MOTH_STATUS_INVALID_CONFIG,
           "asr_bound");
    EXPECT(moth_distance_config_set_json(cfg, "{\"steps\": 3}"), MOTH_STATUS_INVALID_CONFIG,
           "unknown field");
    EXPECT(moth_distance_config_set_json(cfg, "[1]"), MOTH_STATUS_INVALID_CONFIG, "object");
    EXPECT(moth_distance_config_to_json(cfg, buf, sizeof buf, &needed),
           MOTH_STATUS_BUFFER_TOO_SMALL, "too small");
    EXPECT(moth_distance_config_set_samples(cfg, 2), MOTH_STATUS_OK, NULL);
    EXPECT(moth_distance_config_set_steps(cfg, 2), MOTH_STATUS_OK, NULL);
    EXPECT(moth_distance_config_set_seeds(cfg, &seed, 1), MOTH_STATUS_OK, NULL);

    /* Measurements: bad handles, shapes, labels, pairs and models. */
    moth_distance_result *res = NULL;
#define MEASURE_CLF(m) moth_distance_measure(m, cfg, x, y, N, NULL, 0, NULL, NULL, &res)
    BAD_HANDLES(MEASURE_CLF, dead_model, (moth_classifier *)cfg, "a distance config handle");
#define MEASURE_CFG(c) moth_distance_measure(model, c, x, y, N, NULL, 0, NULL, NULL, &res)
    BAD_HANDLES(MEASURE_CFG, dead_cfg, foreign_cfg, "a tensor handle");
#define MEASURE_X(t) moth_distance_measure(model, cfg, t, y, N, NULL, 0, NULL, NULL, &res)
    BAD_HANDLES(MEASURE_X, dead_tensor, (moth_tensor *)model, "a classifier handle");
    EXPECT(moth_distance_measure(model, cfg, y, y, N, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_WRONG_SHAPE, "[n, C, H, W]");
    EXPECT(moth_distance_measure(model, cfg, x, x, N, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_WRONG_SHAPE, "labels");
    EXPECT(moth_distance_measure(model, cfg, x, y, 5, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_LABEL_OUT_OF_RANGE, "label 5");
    EXPECT(moth_distance_measure(model, cfg, x, y, 1, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_INVALID_ARGUMENT, "at least 2");
    EXPECT(moth_distance_measure(model, cfg, x, y, 12, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_WRONG_SHAPE, "logits");
    size_t self_pair[2] = {3, 3}, far_pair[2] = {0, 10};
    EXPECT(moth_distance_measure(model, cfg, x, y, N, self_pair, 1, NULL, NULL, &res),
           MOTH_STATUS_INVALID_INPUT, "directed pair");
    EXPECT(moth_distance_measure(model, cfg, x, y, N, far_pair, 1, NULL, NULL, &res),
           MOTH_STATUS_INVALID_INPUT, "directed pair");
    EXPECT(moth_distance_measure(model, cfg, x, y, N, NULL, 2, NULL, NULL, &res),
           MOTH_STATUS_NULL_POINTER, "pairs");
    EXPECT(moth_distance_measure(model, cfg, x, y, N, NULL, 0, NULL, NULL, NULL),
           MOTH_STATUS_NULL_POINTER, "is NULL");
    int freed = 0;
    moth_classifier *nan_model = NULL;
    EXPECT(moth_classifier_from_host(nan_fwd, grad, NULL, &freed, free_counter, N, &nan_model),
           MOTH_STATUS_OK, NULL);
    EXPECT(moth_distance_measure(nan_model, cfg, x, y, N, NULL, 0, NULL, NULL, &res),
           MOTH_STATUS_MODEL_OUTPUT, "NaN");
    moth_classifier_free(nan_model);
    if (freed != 1) {
        failed++;
        printf("free_user_data ran %d times\n", freed);
    }
    EXPECT(moth_classifier_from_host(NULL, grad, NULL, NULL, NULL, N, &nan_model),
           MOTH_STATUS_NULL_POINTER, "forward");
    EXPECT(moth_classifier_from_host(fwd, grad, NULL, NULL, NULL, 1, &nan_model),
           MOTH_STATUS_INVALID_ARGUMENT, "num_classes");
    size_t pair[2] = {0, 1};
    EXPECT(moth_distance_measure(model, cfg, x, y, N, pair, 1, NULL, NULL, &res), MOTH_STATUS_OK,
           NULL);

    /* Results. */
    moth_distance_result *dead_res = NULL;
    EXPECT(moth_distance_measure(model, cfg, x, y, N, pair, 1, NULL, NULL, &dead_res),
           MOTH_STATUS_OK, NULL);
    moth_distance_result_free(dead_res);
    moth_distance_result *foreign_res = (moth_distance_result *)cfg;
    size_t n = 0;
    int64_t c, h, w;
    double m[N * N];
    float mask[SIDE * SIDE], pattern[SIDE * SIDE];
    bool found;
#define RN(r) moth_distance_result_num_classes(r, &n)
    BAD_HANDLES(RN, dead_res, foreign_res, "a distance config handle");
#define RM(r) moth_distance_result_matrix(r, m, N * N)
    BAD_HANDLES(RM, dead_res, foreign_res, "a distance config handle");
#define RS(r) moth_distance_result_input_shape(r, &c, &h, &w)
    BAD_HANDLES(RS, dead_res, foreign_res, "a distance config handle");
#define RT(r) moth_distance_result_trigger(r, 0, 1, mask, SIDE * SIDE, pattern, SIDE * SIDE, &found)
    BAD_HANDLES(RT, dead_res, foreign_res, "a distance config handle");
#define RJ(r) moth_distance_result_to_json(r, buf, sizeof buf, &needed)
    BAD_HANDLES(RJ, dead_res, foreign_res, "a distance config handle");
    EXPECT(moth_distance_result_matrix(res, m, N * N - 1), MOTH_STATUS_BUFFER_TOO_SMALL, "10x10");
    EXPECT(moth_distance_result_matrix(res, NULL, N * N), MOTH_STATUS_NULL_POINTER, "is NULL");
    EXPECT(moth_distance_result_trigger(res, 0, N, mask, SIDE * SIDE, pattern, SIDE * SIDE,
                                        &found),
           MOTH_STATUS_INVALID_ARGUMENT, "outside");
    EXPECT(moth_distance_result_trigger(res, 1, 0, NULL, 0, NULL, 0, &found), MOTH_STATUS_OK,
           NULL);
    if (found) {
        failed++;
        printf("a pair that was not chosen has a trigger\n");
    }
    EXPECT(moth_distance_result_matrix(res, m, N * N), MOTH_STATUS_OK, NULL);
    if (m[1] > 0) {
        EXPECT(moth_distance_result_trigger(res, 0, 1, mask, 3, NULL, 0, &found),
               MOTH_STATUS_BUFFER_TOO_SMALL, "too small");
        EXPECT(moth_distance_result_trigger(res, 0, 1, NULL, 5, NULL, 0, &found),
               MOTH_STATUS_NULL_POINTER, "mask");
    }
    EXPECT(moth_distance_result_to_json(res, buf, sizeof buf, &needed),
           MOTH_STATUS_BUFFER_TOO_SMALL, "too small");

    /* Trainers: a traced module has no parameters to train; callback
     * classifiers are the caller's to train. */
    moth_trainer *tr = NULL;
    EXPECT(moth_trainer_new(model, NULL, &tr), MOTH_STATUS_INVALID_INPUT, "no trainable");
    moth_classifier *host = NULL;
    EXPECT(moth_classifier_from_host(fwd, grad, NULL, NULL, NULL, N, &host), MOTH_STATUS_OK, NULL);
    EXPECT(moth_trainer_new(host, NULL, &tr), MOTH_STATUS_UNSUPPORTED, "caller's to train");
    EXPECT(moth_trainer_new(model, "rmsprop", &tr), MOTH_STATUS_INVALID_CONFIG, "hardening");
    EXPECT(moth_trainer_new(dead_model, NULL, &tr), MOTH_STATUS_INVALID_HANDLE, "already freed");
    EXPECT(moth_trainer_new(model, NULL, NULL), MOTH_STATUS_NULL_POINTER, "is NULL");
    moth_trainer *foreign_tr = (moth_trainer *)x;
    double loss;
    uint64_t steps;
    moth_buffer *b = NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/no-such-trainer.ckpt", argv[2]);
#define TSTEP(t) moth_trainer_step(t, x, y, &loss)
    EXPECT(TSTEP(NULL), MOTH_STATUS_NULL_POINTER, "is NULL");
    EXPECT(TSTEP(foreign_tr), MOTH_STATUS_INVALID_HANDLE, "a tensor handle");
    EXPECT(moth_trainer_steps(foreign_tr, &steps), MOTH_STATUS_INVALID_HANDLE, "a tensor handle");
    EXPECT(moth_trainer_save(foreign_tr, path), MOTH_STATUS_INVALID_HANDLE, "a tensor handle");
    EXPECT(moth_trainer_to_buffer(foreign_tr, &b), MOTH_STATUS_INVALID_HANDLE, "a tensor handle");
    EXPECT(moth_trainer_load(model, path, &tr), MOTH_STATUS_IO, "no-such-trainer");
    EXPECT(moth_trainer_load(host, path, &tr), MOTH_STATUS_UNSUPPORTED, "caller's to train");
    uint8_t junk[64] = {0};
    EXPECT(moth_trainer_from_buffer(model, junk, sizeof junk, &tr), MOTH_STATUS_CHECKPOINT, NULL);
    EXPECT(moth_trainer_from_buffer(model, NULL, 4, &tr), MOTH_STATUS_NULL_POINTER, "data");
    moth_trainer_free(tr); /* NULL unless a refused call made one anyway */
    moth_trainer_free(NULL);
    moth_trainer_free(foreign_tr);
    moth_distance_result_free(dead_res);
    moth_distance_config_free(dead_cfg);
    moth_distance_config_free((moth_distance_config *)res);

    moth_distance_result_free(res);
    moth_distance_config_free(cfg);
    moth_classifier_free(host);
    moth_classifier_free(model);
    moth_tensor_free(x);
    moth_tensor_free(y);
    printf("hostile_product: %d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
