#define _POSIX_C_SOURCE 199309L
/* A model outside libtorch: a one-hidden-layer tanh network written in C,
 * with its input gradient (vector-Jacobian product) by hand, given to moth
 * as host-buffer callbacks. tests/c_abi_host_model.rs traces the same
 * network to TorchScript; this program measures class distances and runs
 * hardening steps with both and checks they agree within float tolerance,
 * and prints the cost of one inversion step of each.
 *
 * usage: twin MODEL.pt WEIGHTS.f32 IMAGES.f32 LABELS.i64 N SIDE HIDDEN CLASSES
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* logits = W2 tanh(W1 x + b1) + b2 on flattened inputs. */
typedef struct {
    size_t in, hidden, classes;
    const float *w1, *b1, *w2, *b2;
    size_t forwards, grads;
} mlp;

static void hidden_layer(const mlp *m, const float *x, double *h) {
    for (size_t j = 0; j < m->hidden; j++) {
        double a = m->b1[j];
        for (size_t i = 0; i < m->in; i++) a += (double)m->w1[j * m->in + i] * x[i];
        h[j] = tanh(a);
    }
}

static int32_t mlp_forward(void *user, const float *input, size_t n, size_t c, size_t h,
                           size_t w, float *logits, size_t classes) {
    mlp *m = user;
    if (c * h * w != m->in || classes != m->classes) {
        CHECK(moth_callback_set_error("unexpected shape"));
        return 1;
    }
    double *hid = malloc(m->hidden * sizeof(double));
    for (size_t s = 0; s < n; s++) {
        hidden_layer(m, input + s * m->in, hid);
        for (size_t k = 0; k < classes; k++) {
            double z = m->b2[k];
            for (size_t j = 0; j < m->hidden; j++) z += (double)m->w2[k * m->hidden + j] * hid[j];
            logits[s * classes + k] = (float)z;
        }
    }
    free(hid);
    m->forwards++;
    return 0;
}

static int32_t mlp_input_grad(void *user, const float *input, size_t n, size_t c, size_t h,
                              size_t w, const float *grad_logits, size_t classes,
                              float *grad_input) {
    mlp *m = user;
    if (c * h * w != m->in || classes != m->classes) return 1;
    double *hid = malloc(m->hidden * sizeof(double));
    double *da = malloc(m->hidden * sizeof(double));
    for (size_t s = 0; s < n; s++) {
        hidden_layer(m, input + s * m->in, hid);
        for (size_t j = 0; j < m->hidden; j++) {
            double dh = 0;
            for (size_t k = 0; k < classes; k++)
                dh += (double)m->w2[k * m->hidden + j] * grad_logits[s * classes + k];
            da[j] = dh * (1 - hid[j] * hid[j]);
        }
        for (size_t i = 0; i < m->in; i++) {
            double dx = 0;
            for (size_t j = 0; j < m->hidden; j++) dx += (double)m->w1[j * m->in + i] * da[j];
            grad_input[s * m->in + i] = (float)dx;
        }
    }
    free(hid);
    free(da);
    m->grads++;
    return 0;
}

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

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Measures the matrix (into m) and the triggers (into masks, H*W per
 * directed pair); returns the seconds taken. */
static double distances(moth_classifier *clf, const moth_distance_config *cfg, moth_tensor *x,
                        moth_tensor *y, size_t classes, size_t pixels, double *m,
                        float *masks) {
    moth_distance_result *res = NULL;
    double t0 = now();
    CHECK(moth_distance_measure(clf, cfg, x, y, classes, NULL, 0, NULL, NULL, &res));
    double t = now() - t0;
    CHECK(moth_distance_result_matrix(res, m, classes * classes));
    for (size_t a = 0; a < classes; a++)
        for (size_t b = 0; b < classes; b++) {
            bool found = false;
            float *mask = masks + (a * classes + b) * pixels;
            memset(mask, 0, pixels * sizeof(float));
            CHECK(moth_distance_result_trigger(res, a, b, mask, pixels, NULL, 0, &found));
        }
    moth_distance_result_free(res);
    return t;
}

/* Runs `steps` hardening steps (warm-up, then orthogonalisation) on the
 * batch and writes each step's first direction size into sizes. */
static void harden(moth_classifier *clf, size_t classes, int64_t side, moth_tensor *x,
                   moth_tensor *y, int steps, double *sizes) {
    moth_config *cfg = NULL;
    CHECK(moth_config_new(&cfg));
    CHECK(moth_config_set_json(cfg,
                               "{\"accuracy_every\":0,\"warmup\":{\"budget\":{\"steps\":8}},"
                               "\"first\":{\"steps\":8},\"later\":{\"steps\":4}}"));
    moth_session *s = NULL;
    CHECK(moth_session_new(cfg, classes, 1, side, side, &s));
    for (int i = 0; i < steps; i++) {
        moth_tensor *stamped = NULL;
        CHECK(moth_session_harden_batch(s, clf, x, y, &stamped));
        moth_step_report r;
        CHECK(moth_session_last_report(s, &r));
        sizes[i] = r.num_directions > 0 ? r.directions[0].size : -1;
        moth_tensor_free(stamped);
    }
    moth_session_free(s);
    moth_config_free(cfg);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s MODEL WEIGHTS IMAGES LABELS N SIDE HIDDEN CLASSES\n", argv[0]);
        return 2;
    }
    int64_t n = atoll(argv[5]), side = atoll(argv[6]);
    size_t hidden = (size_t)atoll(argv[7]), classes = (size_t)atoll(argv[8]);
    size_t pixels = (size_t)(side * side);
    size_t nweights = hidden * pixels + hidden + classes * hidden + classes;
    float *wts = read_file(argv[2], nweights * sizeof(float));
    mlp net = {pixels, hidden, classes, wts, wts + hidden * pixels,
               wts + hidden * pixels + hidden, wts + hidden * pixels + hidden + classes * hidden,
               0, 0};
    float *pixels_buf = read_file(argv[3], (size_t)n * pixels * sizeof(float));
    int64_t *labels = read_file(argv[4], (size_t)n * sizeof(int64_t));

    moth_device cpu = {MOTH_DEVICE_TYPE_CPU, 0};
    moth_classifier *script = NULL, *host = NULL;
    CHECK(moth_classifier_from_torchscript(argv[1], 1, side, side, cpu, &script));
    CHECK(moth_classifier_from_host(mlp_forward, mlp_input_grad, NULL, &net, NULL, classes,
                                    &host));
    if (moth_classifier_from_host(mlp_forward, NULL, NULL, &net, NULL, classes, &host) !=
        MOTH_STATUS_NULL_POINTER) {
        fprintf(stderr, "a host classifier without input_grad was accepted\n");
        return 1;
    }
    CHECK(moth_classifier_from_host(mlp_forward, mlp_input_grad, NULL, &net, NULL, classes,
                                    &host));
    int64_t xshape[4] = {n, 1, side, side}, yshape[1] = {n};
    moth_tensor *x = NULL, *y = NULL;
    CHECK(moth_tensor_from_buffer(pixels_buf, MOTH_DTYPE_FLOAT32, xshape, 4, cpu, &x));
    CHECK(moth_tensor_from_buffer(labels, MOTH_DTYPE_INT64, yshape, 1, cpu, &y));

    /* The logits agree. */
    moth_tensor *ls = NULL, *lh = NULL;
    CHECK(moth_classifier_forward(script, x, &ls));
    CHECK(moth_classifier_forward(host, x, &lh));
    float *a = malloc((size_t)n * classes * sizeof(float));
    float *b = malloc((size_t)n * classes * sizeof(float));
    CHECK(moth_tensor_copy_to_buffer(ls, a, (size_t)n * classes * sizeof(float)));
    CHECK(moth_tensor_copy_to_buffer(lh, b, (size_t)n * classes * sizeof(float)));
    double worst = 0;
    for (size_t i = 0; i < (size_t)n * classes; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    printf("logits max difference %.3g\n", worst);
    if (worst > 1e-4) return 1;

    moth_distance_config *dc = NULL;
    CHECK(moth_distance_config_new("quick", &dc));
    CHECK(moth_distance_config_set_samples(dc, 8));
    CHECK(moth_distance_config_set_steps(dc, 40));
    double *ms = malloc(classes * classes * sizeof(double));
    double *mh = malloc(classes * classes * sizeof(double));
    float *ks = malloc(classes * classes * pixels * sizeof(float));
    float *kh = malloc(classes * classes * pixels * sizeof(float));
    /* Warm both up once (first-call costs), then time them. */
    distances(script, dc, x, y, classes, pixels, ms, ks);
    double ts = distances(script, dc, x, y, classes, pixels, ms, ks);
    net.forwards = net.grads = 0;
    double th = distances(host, dc, x, y, classes, pixels, mh, kh);
    /* One inversion step is one pass over a source's samples for all its
     * targets: 40 steps per source class, one mini-batch each here. */
    double steps = 40.0 * (double)classes;
    printf("host callbacks: %zu forwards, %zu input gradients\n", net.forwards, net.grads);
    printf("one inversion step: torchscript %.3f ms, host callbacks %.3f ms, ratio %.2f\n",
           1e3 * ts / steps, 1e3 * th / steps, th / ts);
    double dmax = 0, kmax = 0;
    size_t measured = 0;
    for (size_t i = 0; i < classes * classes; i++) {
        if ((ms[i] > 0) != (mh[i] > 0)) {
            fprintf(stderr, "pair %zu measured by one twin only: %g vs %g\n", i, ms[i], mh[i]);
            return 1;
        }
        if (ms[i] > 0) measured++;
        dmax = fmax(dmax, fabs(ms[i] - mh[i]) / fmax(ms[i], 1e-9));
    }
    for (size_t i = 0; i < classes * classes * pixels; i++) kmax = fmax(kmax, fabs(ks[i] - kh[i]));
    printf("distances: %zu measured, max relative difference %.3g; masks max difference %.3g\n",
           measured, dmax, kmax);
    for (size_t r = 0; r < classes; r++) {
        printf("row %zu:", r);
        for (size_t c = 0; c < classes; c++) printf(" %.4f/%.4f", ms[r * classes + c], mh[r * classes + c]);
        printf("\n");
    }
    /* The twins round differently (logits agree to about 1e-6), and 40
     * inversion steps with threshold decisions (ASR bound, best trigger)
     * amplify that: on an AVX-512 CPU one source class ended 0.17% apart,
     * with a mask pixel 0.05 apart. The bounds leave about three times
     * that noise, no more. */
    if (measured < classes || dmax > 5e-3 || kmax > 0.1) return 1;

    /* Hardening steps (warm-up, then pairs) agree too. */
    int steps_h = (int)classes + 2;
    double *hs = malloc((size_t)steps_h * sizeof(double));
    double *hh = malloc((size_t)steps_h * sizeof(double));
    harden(script, classes, side, x, y, steps_h, hs);
    harden(host, classes, side, x, y, steps_h, hh);
    double hmax = 0;
    for (int i = 0; i < steps_h; i++) {
        printf("step %d size %.4f / %.4f\n", i, hs[i], hh[i]);
        hmax = fmax(hmax, fabs(hs[i] - hh[i]) / fmax(fabs(hs[i]), 1e-9));
    }
    printf("hardening: max relative difference %.3g\n", hmax);
    if (hmax > 1e-3) return 1;

    moth_distance_config_free(dc);
    moth_tensor_free(ls);
    moth_tensor_free(lh);
    moth_tensor_free(x);
    moth_tensor_free(y);
    moth_classifier_free(script);
    moth_classifier_free(host);
    free(wts);
    free(pixels_buf);
    free(labels);
    free(a);
    free(b);
    free(ms);
    free(mh);
    free(ks);
    free(kh);
    free(hs);
    free(hh);
    printf("ok\n");
    return 0;
}
