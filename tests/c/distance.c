/* Measures the class-distance matrix of a TorchScript classifier through
 * include/moth.h, for tests/c_abi_distance.rs, which compares it with what
 * `moth distance` writes for the same samples and protocol.
 *
 * usage: distance MODEL.pt IMAGES.f32 LABELS.i64 N C H W CLASSES SAMPLES STEPS SEED
 *   IMAGES.f32: N*C*H*W floats (NCHW, row-major); LABELS.i64: N int64.
 * Prints "progress DONE/TOTAL" lines, "cancelled ok", "pairs ok", then the
 * matrix as "row A: v v v ..." with every value at full precision, and
 * "trigger ok" after checking each found trigger's size against the matrix.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moth.h"

#define CHECK(call)                                                             \
    do {                                                                        \
        moth_status st_ = (call);                                               \
        if (st_ != MOTH_STATUS_OK) {                                            \
            char msg_[1024];                                                    \
            size_t need_ = 0;                                                   \
            if (moth_last_error(msg_, sizeof msg_, &need_) != MOTH_STATUS_OK)   \
                msg_[0] = 0;                                                    \
            fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, \
                    moth_status_name(st_), msg_);                               \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

static void *read_file(const char *path, size_t bytes) {
    FILE *f = fopen(path, "rb");
    void *p = malloc(bytes);
    if (!f || !p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %zu bytes of %s\n", bytes, path);
        exit(1);
    }
    fclose(f);
    return p;
}

static int32_t print_progress(void *user, size_t done, size_t total) {
    size_t *calls = user;
    ++*calls;
    printf("progress %zu/%zu\n", done, total);
    return 0;
}

static int32_t cancel_at_once(void *user, size_t done, size_t total) {
    (void)done;
    (void)total;
    ++*(size_t *)user;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: %s MODEL IMAGES LABELS N C H W CLASSES SAMPLES STEPS SEED\n",
                argv[0]);
        return 2;
    }
    int64_t n = atoll(argv[4]), c = atoll(argv[5]), h = atoll(argv[6]), w = atoll(argv[7]);
    size_t classes = (size_t)atoll(argv[8]);
    float *pixels = read_file(argv[2], (size_t)(n * c * h * w) * sizeof(float));
    int64_t *labels = read_file(argv[3], (size_t)n * sizeof(int64_t));

    moth_device cpu = {MOTH_DEVICE_TYPE_CPU, 0};
    moth_classifier *clf = NULL;
    CHECK(moth_classifier_from_torchscript(argv[1], c, h, w, cpu, &clf));
    int64_t xshape[4] = {n, c, h, w};
    int64_t yshape[1] = {n};
    moth_tensor *x = NULL, *y = NULL;
    CHECK(moth_tensor_from_buffer(pixels, MOTH_DTYPE_FLOAT32, xshape, 4, cpu, &x));
    CHECK(moth_tensor_from_buffer(labels, MOTH_DTYPE_INT64, yshape, 1, cpu, &y));

    /* The protocol as `moth distance --protocol quick --samples S --steps T
     * --seeds SEED` builds it. */
    moth_distance_config *cfg = NULL;
    CHECK(moth_distance_config_new("quick", &cfg));
    CHECK(moth_distance_config_set_samples(cfg, (size_t)atoll(argv[9])));
    CHECK(moth_distance_config_set_steps(cfg, (size_t)atoll(argv[10])));
    uint64_t seed = (uint64_t)strtoull(argv[11], NULL, 10);
    CHECK(moth_distance_config_set_seeds(cfg, &seed, 1));
    if (moth_distance_config_set_asr_bound(cfg, 1.5) != MOTH_STATUS_INVALID_CONFIG) {
        fprintf(stderr, "an ASR bound of 1.5 was accepted\n");
        return 1;
    }

    /* A progress callback that cancels: no result, a flow signal. */
    size_t calls = 0;
    moth_distance_result *res = NULL;
    moth_status st = moth_distance_measure(clf, cfg, x, y, classes, NULL, 0, cancel_at_once,
                                           &calls, &res);
    if (st != MOTH_STATUS_CANCELLED || res != NULL || calls != 1) {
        fprintf(stderr, "cancel: %s, %zu calls\n", moth_status_name(st), calls);
        return 1;
    }
    printf("cancelled ok\n");

    /* Chosen pairs: only those are measured. */
    size_t pairs[4] = {0, 1, 2, 0};
    CHECK(moth_distance_measure(clf, cfg, x, y, classes, pairs, 2, NULL, NULL, &res));
    double *m = calloc(classes * classes, sizeof(double));
    CHECK(moth_distance_result_matrix(res, m, classes * classes));
    for (size_t a = 0; a < classes; a++)
        for (size_t b = 0; b < classes; b++) {
            int chosen = (a == 0 && b == 1) || (a == 2 && b == 0);
            if (!chosen && m[a * classes + b] != 0.0) {
                fprintf(stderr, "pair %zu->%zu was not chosen but reads %g\n", a, b,
                        m[a * classes + b]);
                return 1;
            }
        }
    moth_distance_result_free(res);
    printf("pairs ok\n");

    calls = 0;
    CHECK(moth_distance_measure(clf, cfg, x, y, classes, NULL, 0, print_progress, &calls, &res));
    size_t got = 0;
    CHECK(moth_distance_result_num_classes(res, &got));
    if (got != classes || calls != classes) {
        fprintf(stderr, "%zu classes, %zu progress calls\n", got, calls);
        return 1;
    }
    CHECK(moth_distance_result_matrix(res, m, classes * classes));
    for (size_t a = 0; a < classes; a++) {
        printf("row %zu:", a);
        for (size_t b = 0; b < classes; b++) printf(" %.17g", m[a * classes + b]);
        printf("\n");
    }
    /* Each found trigger's size C * sum(mask) is its distance. */
    int64_t tc, th, tw;
    CHECK(moth_distance_result_input_shape(res, &tc, &th, &tw));
    float *mask = malloc((size_t)(th * tw) * sizeof(float));
    float *pattern = malloc((size_t)(tc * th * tw) * sizeof(float));
    size_t found_count = 0;
    for (size_t a = 0; a < classes; a++)
        for (size_t b = 0; b < classes; b++) {
            bool found = false;
            CHECK(moth_distance_result_trigger(res, a, b, mask, (size_t)(th * tw), pattern,
                                               (size_t)(tc * th * tw), &found));
            if (found != (a != b && m[a * classes + b] > 0)) {
                fprintf(stderr, "trigger %zu->%zu found=%d, distance %g\n", a, b, found,
                        m[a * classes + b]);
                return 1;
            }
            if (!found) continue;
            double sum = 0;
            for (int64_t i = 0; i < th * tw; i++) sum += mask[i];
            if (fabs(sum * (double)tc - m[a * classes + b]) > 1e-3 * m[a * classes + b]) {
                fprintf(stderr, "trigger %zu->%zu has size %g, distance %g\n", a, b,
                        sum * (double)tc, m[a * classes + b]);
                return 1;
            }
            found_count++;
        }
    printf("trigger ok (%zu found)\n", found_count);
    size_t need = 0;
    if (moth_distance_result_to_json(res, NULL, 0, &need) != MOTH_STATUS_BUFFER_TOO_SMALL ||
        need < 10) {
        fprintf(stderr, "to_json size query failed\n");
        return 1;
    }
    moth_distance_result_free(res);
    moth_distance_config_free(cfg);
    moth_tensor_free(x);
    moth_tensor_free(y);
    moth_classifier_free(clf);
    free(m);
    free(mask);
    free(pattern);
    free(pixels);
    free(labels);
    printf("ok\n");
    return 0;
}
