/*
 * harden.c: drive a moth hardening session from C99.
 *
 * Loads Fashion-MNIST images itself (gzip IDX files, read with zlib), loads
 * a TorchScript classifier (C cannot build a libtorch model; any module
 * saved with torch.jit.save that maps [n,1,28,28] pixels in [0,1] to
 * [n,10] logits will do), and runs hardening steps: harden_batch, the step
 * report, clean-accuracy reports when the session asks, a checkpoint and a
 * resume halfway (file and in-memory buffer), and the scheduler matrices at
 * the end. This program does no training of its own (a C trainer would
 * train on the stamped batch after each step); examples/cpp/trainer.cpp
 * shows the full loop.
 *
 * Build (see examples/README.md):
 *   cc -std=c99 -O2 examples/c/harden.c -Iinclude -Ltarget/release -lmoth \
 *      -Wl,-rpath,$PWD/target/release -lz -o harden
 * Run:
 *   ./harden model.pt [--data DIR] [--images N] [--batch B] [--steps S]
 *                     [--config JSON] [--checkpoint PATH]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "moth.h"

#define SIDE 28
#define PIXELS (SIDE * SIDE)
#define CLASSES 10

/* Prints the failing call, its status and moth's message, then exits. */
static void fail(const char *what, moth_status st, const moth_session *s) {
    char msg[1024] = "";
    size_t needed = 0;
    moth_status got = s ? moth_session_last_error(s, msg, sizeof msg, &needed)
                        : moth_last_error(msg, sizeof msg, &needed);
    if (got != MOTH_STATUS_OK) {
        strcpy(msg, "(message unavailable)");
    }
    fprintf(stderr, "error: %s: %s (%d): %s\n", what, moth_status_name(st), (int)st, msg);
    exit(1);
}

#define CHECK(call, session)                                                                       \
    do {                                                                                           \
        moth_status st_ = (call);                                                                  \
        if (st_ != MOTH_STATUS_OK) fail(#call, st_, (session));                                    \
    } while (0)

/* Reads a big-endian 32-bit integer from a gzip stream. */
static int read_be32(gzFile f, unsigned long *out) {
    unsigned char b[4];
    if (gzread(f, b, 4) != 4) return -1;
    *out = ((unsigned long)b[0] << 24) | ((unsigned long)b[1] << 16) |
           ((unsigned long)b[2] << 8) | (unsigned long)b[3];
    return 0;
}

/* Loads the first `n` images (as floats in [0,1]) and labels of an IDX pair. */
static int load_idx(const char *dir, size_t n, float *images, int64_t *labels) {
    char path[4096];
    unsigned long magic, count, rows, cols, i;
    unsigned char *raw;
    gzFile f;

    snprintf(path, sizeof path, "%s/train-images-idx3-ubyte.gz", dir);
    f = gzopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    if (read_be32(f, &magic) || read_be32(f, &count) || read_be32(f, &rows) ||
        read_be32(f, &cols) || magic != 2051 || rows != SIDE || cols != SIDE || count < n) {
        fprintf(stderr, "%s: not a 28x28 IDX image file with %lu images\n", path,
                (unsigned long)n);
        gzclose(f);
        return -1;
    }
    raw = malloc(n * PIXELS);
    if (!raw || gzread(f, raw, (unsigned)(n * PIXELS)) != (int)(n * PIXELS)) {
        fprintf(stderr, "%s: truncated\n", path);
        free(raw);
        gzclose(f);
        return -1;
    }
    gzclose(f);
    for (i = 0; i < n * PIXELS; i++) images[i] = raw[i] / 255.0f;

    snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte.gz", dir);
    f = gzopen(path, "rb");
    if (!f || read_be32(f, &magic) || read_be32(f, &count) || magic != 2049 || count < n ||
        gzread(f, raw, (unsigned)n) != (int)n) {
        fprintf(stderr, "%s: cannot read %lu labels\n", path, (unsigned long)n);
        free(raw);
        if (f) gzclose(f);
        return -1;
    }
    gzclose(f);
    for (i = 0; i < n; i++) labels[i] = raw[i];
    free(raw);
    return 0;
}

static void log_to_stderr(moth_log_level level, const char *message, void *user_data) {
    static const char *names[] = {"?", "error", "warn", "info", "debug", "trace"};
    (void)user_data;
    fprintf(stderr, "[moth %s] %s\n", names[level >= 1 && level <= 5 ? level : 0], message);
}

static const char *phase_name(moth_phase_kind k) {
    switch (k) {
    case MOTH_PHASE_KIND_WARMUP: return "warmup";
    case MOTH_PHASE_KIND_ORTHOGONALIZE: return "orthogonalize";
    case MOTH_PHASE_KIND_UNIVERSAL: return "universal";
    case MOTH_PHASE_KIND_DONE: return "done";
    }
    return "?";
}

/* Clean accuracy of the classifier on `n` held-out images, computed in C
 * from the logits moth returns. */
static double accuracy(moth_classifier *clf, const float *images, const int64_t *labels,
                       size_t n) {
    int64_t shape[4] = {0, 1, SIDE, SIDE};
    moth_device cpu = {MOTH_DEVICE_TYPE_CPU, 0};
    moth_tensor *x = NULL, *logits = NULL;
    float *out = malloc(n * CLASSES * sizeof(float));
    size_t i, correct = 0;
    int c;
    shape[0] = (int64_t)n;
    CHECK(moth_tensor_from_buffer(images, MOTH_DTYPE_FLOAT32, shape, 4, cpu, &x), NULL);
    CHECK(moth_classifier_forward(clf, x, &logits), NULL);
    CHECK(moth_tensor_copy_to_buffer(logits, out, n * CLASSES * sizeof(float)), NULL);
    for (i = 0; i < n; i++) {
        int best = 0;
        for (c = 1; c < CLASSES; c++)
            if (out[i * CLASSES + c] > out[i * CLASSES + best]) best = c;
        correct += best == labels[i];
    }
    moth_tensor_free(logits);
    moth_tensor_free(x);
    free(out);
    return (double)correct / (double)n;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *data_dir = "/usr/share/datasets/fashion-mnist";
    const char *user_config = NULL, *ckpt_path = "harden-c.ckpt";
    size_t n_images = 400, batch = 64, heldout, n_train;
    unsigned long steps = 14, step;
    float *images;
    int64_t *labels;
    moth_config *cfg = NULL;
    moth_classifier *clf = NULL;
    moth_session *s = NULL;
    moth_device cpu = {MOTH_DEVICE_TYPE_CPU, 0};
    size_t offset = 0;
    int i;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--data") && i + 1 < argc) data_dir = argv[++i];
        else if (!strcmp(argv[i], "--images") && i + 1 < argc) n_images = strtoul(argv[++i], 0, 10);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = strtoul(argv[++i], 0, 10);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = strtoul(argv[++i], 0, 10);
        else if (!strcmp(argv[i], "--config") && i + 1 < argc) user_config = argv[++i];
        else if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc) ckpt_path = argv[++i];
        else if (argv[i][0] != '-' && !model_path) model_path = argv[i];
        else {
            fprintf(stderr, "usage: %s MODEL.pt [--data DIR] [--images N] [--batch B] "
                            "[--steps S] [--config JSON] [--checkpoint PATH]\n", argv[0]);
            return 2;
        }
    }
    if (!model_path || n_images < 2 * batch || batch == 0) {
        fprintf(stderr, "need a model path and --images >= 2 * --batch\n");
        return 2;
    }

    /* The library must speak the ABI this program was compiled against. */
    printf("moth %s (ABI %u, header ABI %d)\n", moth_version(), moth_abi_version(),
           MOTH_ABI_VERSION);
    if (moth_abi_version() != MOTH_ABI_VERSION) return 1;

    images = malloc(n_images * PIXELS * sizeof(float));
    labels = malloc(n_images * sizeof(int64_t));
    if (!images || !labels || load_idx(data_dir, n_images, images, labels)) return 1;
    heldout = n_images / 4;
    n_train = n_images - heldout;
    printf("loaded %lu Fashion-MNIST images (%lu for hardening, %lu held out)\n",
           (unsigned long)n_images, (unsigned long)n_train, (unsigned long)heldout);

    /* A quick configuration: small inversion budgets so that a CPU run takes
     * seconds; a caller's JSON is merged on top. */
    CHECK(moth_config_new(&cfg), NULL);
    CHECK(moth_config_set_json(cfg, "{\"seed\": 1, \"accuracy_every\": 5, \"period\": 2, \"portion\": 0.5,"
                                    " \"warmup\": {\"budget\": {\"steps\": 4},"
                                    " \"pool_per_class\": 4},"
                                    " \"first\": {\"steps\": 4}, \"later\": {\"steps\": 2},"
                                    " \"max_accuracy_drop\": 0.5}"),
          NULL);
    CHECK(moth_config_set_int(cfg, "max_steps", (int64_t)steps), NULL);
    if (user_config) CHECK(moth_config_set_json(cfg, user_config), NULL);

    CHECK(moth_classifier_from_torchscript(model_path, 1, SIDE, SIDE, cpu, &clf), NULL);
    CHECK(moth_session_new(cfg, CLASSES, 1, SIDE, SIDE, &s), NULL);
    CHECK(moth_session_set_log_callback(s, log_to_stderr, NULL, NULL), s);

    for (step = 0;; step++) {
        int64_t xshape[4] = {0, 1, SIDE, SIDE}, yshape[1];
        moth_tensor *x = NULL, *y = NULL, *stamped = NULL;
        moth_step_report r;
        moth_status st;
        size_t d;
        bool wanted = false;

        CHECK(moth_session_wants_accuracy(s, &wanted), s);
        if (wanted) {
            moth_verdict v = MOTH_VERDICT_NONE;
            double drop = 0, acc = accuracy(clf, images + n_train * PIXELS, labels + n_train,
                                            heldout);
            CHECK(moth_session_report_accuracy(s, acc, &v, &drop), s);
            printf("accuracy %.4f -> verdict %d (drop %.4f)\n", acc, (int)v, drop);
        }

        xshape[0] = (int64_t)batch;
        yshape[0] = (int64_t)batch;
        if (offset + batch > n_train) offset = 0;
        CHECK(moth_tensor_from_buffer(images + offset * PIXELS, MOTH_DTYPE_FLOAT32, xshape, 4,
                                      cpu, &x),
              NULL);
        CHECK(moth_tensor_from_buffer(labels + offset, MOTH_DTYPE_INT64, yshape, 1, cpu, &y),
              NULL);
        offset += batch;

        st = moth_session_harden_batch(s, clf, x, y, &stamped);
        moth_tensor_free(x);
        moth_tensor_free(y);
        if (st == MOTH_STATUS_DONE) {
            printf("session done after %lu steps\n", step);
            break;
        }
        if (st != MOTH_STATUS_OK) fail("moth_session_harden_batch", st, s);

        /* A trainer would train on `stamped` (with the unchanged labels) here. */
        moth_tensor_free(stamped);

        CHECK(moth_session_last_report(s, &r), s);
        printf("step %llu %s", (unsigned long long)r.step, phase_name(r.phase.kind));
        if (r.phase.kind == MOTH_PHASE_KIND_ORTHOGONALIZE)
            printf(" pair %lu<->%lu", (unsigned long)r.phase.source, (unsigned long)r.phase.target);
        else
            printf(" target %lu", (unsigned long)r.phase.target);
        for (d = 0; d < r.num_directions; d++) {
            const moth_direction *dir = &r.directions[d];
            printf(" | %lld->%lu size %.2f %s stamped %lu", (long long)dir->victim,
                   (unsigned long)dir->target, dir->size, dir->reached ? "reached" : "failed",
                   (unsigned long)dir->stamped);
        }
        printf(" | %lu inv steps %.3fs\n", (unsigned long)r.inversion_steps, r.seconds);

        /* Halfway: checkpoint, drop the session, resume from the file; then
         * check the in-memory buffer round trip as well. */
        if (step + 1 == steps / 2) {
            moth_buffer *buf = NULL;
            moth_session *copy = NULL;
            const uint8_t *bytes = NULL;
            size_t len = 0;
            uint64_t at = 0, again = 0;
            CHECK(moth_session_save(s, ckpt_path), s);
            CHECK(moth_session_step(s, &at), s);
            moth_session_free(s);
            s = NULL;
            CHECK(moth_session_load(ckpt_path, CLASSES, 1, SIDE, SIDE, &s), NULL);
            CHECK(moth_session_set_log_callback(s, log_to_stderr, NULL, NULL), s);
            CHECK(moth_session_step(s, &again), s);
            CHECK(moth_session_to_buffer(s, &buf), s);
            CHECK(moth_buffer_data(buf, &bytes, &len), NULL);
            CHECK(moth_session_from_buffer(bytes, len, CLASSES, 1, SIDE, SIDE, &copy), NULL);
            moth_buffer_free(buf);
            moth_session_free(copy);
            printf("checkpoint: saved at step %llu, resumed at step %llu (%lu bytes)\n",
                   (unsigned long long)at, (unsigned long long)again, (unsigned long)len);
        }
    }

    {
        double sizes[CLASSES * CLASSES], counts[CLASSES * CLASSES];
        int r, c;
        CHECK(moth_session_matrix(s, MOTH_MATRIX_SIZE, sizes, CLASSES * CLASSES), s);
        CHECK(moth_session_matrix(s, MOTH_MATRIX_COUNT, counts, CLASSES * CLASSES), s);
        printf("trigger sizes (row: victim, column: target):\n");
        for (r = 0; r < CLASSES; r++) {
            for (c = 0; c < CLASSES; c++) printf(" %6.1f", sizes[r * CLASSES + c]);
            printf("\n");
        }
        for (r = 0, c = 0; r < CLASSES * CLASSES; r++) c += (int)counts[r];
        printf("pairs chosen (counted both ways): %d\n", c);
    }

    moth_session_free(s);
    moth_classifier_free(clf);
    moth_config_free(cfg);
    free(images);
    free(labels);
    printf("ok\n");
    return 0;
}
