// Op-level oracle test: every op, built as a one-op graph through the public builder API and
// differentiated by the generic autodiff, reproduces PyTorch's forward output and input
// gradients (fixtures: tests/data/oracle/ops.safetensors, from tests/oracle/gen_ops.py).
// AdamW and SGD updates are checked on the fixture's given gradients.

#include "backend/cpu/kernels.h"
#include "loom/exec.h"
#include "loom/safetensors.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define MAX_LEAVES 8

typedef struct op_case {
    const char *op;                // fixture prefix ("linear")
    loom_graph_t g;
    int n_leaves;
    loom_value leaf[MAX_LEAVES];
    char key[MAX_LEAVES][64];      // fixture tensor of each leaf ("linear.x")
    loom_value y;
} op_case;

static loom_weights_t fx;

static float meta(const char *key) {
    const char *s = loom_weights_metadata(fx, key);
    if (!s) {
        fprintf(stderr, "ops fixture lacks metadata '%s'\n", key);
        exit(1);
    }
    return strtof(s, NULL);
}

static void read_fixture(const char *key, void *dst, loom_dtype dtype) {
    loom_tensor_info info;
    CHECK_OK(loom_weights_find(fx, key, &info));
    if (dtype == LOOM_DTYPE_I32)
        CHECK_OK(loom_weights_read_i32(fx, key, info.ndim, info.shape, dst));
    else
        CHECK_OK(loom_weights_read_f32(fx, key, info.ndim, info.shape, dst));
}

static float *fixture_f32(const char *key, int64_t *numel) {
    loom_tensor_info info;
    if (loom_weights_find(fx, key, &info) < 0) return NULL;
    *numel = 1;
    for (int i = 0; i < info.ndim; i++) *numel *= info.shape[i];
    float *buf = malloc((size_t)*numel * sizeof(float));
    read_fixture(key, buf, LOOM_DTYPE_F32);
    return buf;
}

// A leaf with the fixture tensor's shape: float tensors are parameters (so they get gradients),
// integer tensors are inputs.
static loom_value leaf(op_case *c, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "%s.%s", c->op, name);
    loom_tensor_info info;
    if (loom_weights_find(fx, key, &info) < 0) {
        fprintf(stderr, "%s\n", loom_last_error());
        exit(1);
    }
    loom_value v = info.dtype == LOOM_DTYPE_I32
                       ? loom_graph_input(c->g, key, LOOM_DTYPE_I32, info.ndim, info.shape)
                       : loom_graph_param(c->g, key, info.ndim, info.shape);
    c->leaf[c->n_leaves] = v;
    snprintf(c->key[c->n_leaves], sizeof c->key[0], "%s", key);
    c->n_leaves++;
    return v;
}

static void begin(op_case *c, const char *op) {
    memset(c, 0, sizeof *c);
    c->op = op;
    CHECK_OK(loom_graph_create(&c->g));
}

static void compare(const char *what, const float *got, const char *key, double tol) {
    int64_t n = 0;
    float *want = fixture_f32(key, &n);
    if (!want) {
        CHECK_MSG(0, "fixture tensor %s missing", key);
        return;
    }
    double err = tu_max_rel_err(got, want, (size_t)n, 1e-6);
    CHECK_MSG(err < tol, "%s: %s relative error %.3g (tolerance %.0e)", what, key, err, tol);
    free(want);
}

// Finish a case: loss = sum(y * dy) (so d loss / d y = dy), or y itself when it is the loss;
// run forward and backward; compare y and the gradient of every float leaf ("x" -> "dx").
static void run_case(op_case *c, loom_value y, int y_is_loss) {
    loom_graph_t g = c->g;
    c->y = y;
    loom_graph_mark_output(g, y);
    loom_value loss = y, dy = LOOM_NONE;
    char key[80];
    if (!y_is_loss) {
        snprintf(key, sizeof key, "%s.dy", c->op);
        int64_t shape[LOOM_MAX_DIMS];
        int nd = loom_value_shape(g, y, shape);
        dy = loom_graph_input(g, key, LOOM_DTYPE_F32, nd, shape);
        loss = loom_sum(g, loom_mul(g, y, dy));
    }
    CHECK_OK(loom_graph_status(g));
    CHECK_OK(loom_graph_backward(g, loss));
    loom_exec_t ex;
    CHECK_OK(loom_exec_create(g, &ex));
    if (!ex) {
        loom_graph_destroy(g);
        return;
    }
    void *buf;
    for (int i = 0; i < c->n_leaves; i++) {
        CHECK_OK(loom_exec_buffer(ex, c->leaf[i], &buf));
        read_fixture(c->key[i], buf, loom_value_dtype(g, c->leaf[i]));
    }
    if (dy != LOOM_NONE) {
        CHECK_OK(loom_exec_buffer(ex, dy, &buf));
        read_fixture(key, buf, LOOM_DTYPE_F32);
    }
    CHECK_OK(loom_exec_run(ex));
    CHECK_OK(loom_exec_buffer(ex, y, &buf));
    snprintf(key, sizeof key, "%s.%s", c->op, y_is_loss ? "loss" : "y");
    compare(c->op, buf, key, 1e-5);
    for (int i = 0; i < c->n_leaves; i++) {
        if (loom_value_dtype(g, c->leaf[i]) != LOOM_DTYPE_F32) continue;
        const char *short_name = strchr(c->key[i], '.') + 1;
        snprintf(key, sizeof key, "%s.d%s", c->op, short_name);
        CHECK_OK(loom_exec_buffer(ex, loom_graph_grad(g, c->leaf[i]), &buf));
        compare(c->op, buf, key, 1e-4);
    }
    printf("%s: ok\n", c->op);
    loom_exec_free(ex);
    loom_graph_destroy(g);
}

static void test_ops(void) {
    op_case c;
    begin(&c, "linear");
    run_case(&c, loom_linear(c.g, leaf(&c, "x"), leaf(&c, "w"), leaf(&c, "b")), 0);
    begin(&c, "conv1d");
    run_case(&c, loom_conv1d(c.g, leaf(&c, "x"), leaf(&c, "w"), leaf(&c, "b")), 0);
    begin(&c, "matmul");
    run_case(&c, loom_matmul(c.g, leaf(&c, "a"), leaf(&c, "b")), 0);
    begin(&c, "embedding");
    run_case(&c, loom_embedding(c.g, leaf(&c, "idx"), leaf(&c, "w")), 0);
    begin(&c, "add");
    run_case(&c, loom_add(c.g, leaf(&c, "a"), leaf(&c, "b")), 0);
    begin(&c, "mul");
    run_case(&c, loom_mul(c.g, leaf(&c, "a"), leaf(&c, "b")), 0);
    begin(&c, "gelu");
    run_case(&c, loom_gelu(c.g, leaf(&c, "x")), 0);
    begin(&c, "silu");
    run_case(&c, loom_silu(c.g, leaf(&c, "x")), 0);
    begin(&c, "layernorm");
    run_case(&c, loom_layer_norm(c.g, leaf(&c, "x"), leaf(&c, "w"), leaf(&c, "b"),
                                 meta("layernorm.eps")), 0);
    begin(&c, "rmsnorm");
    run_case(&c, loom_rms_norm(c.g, leaf(&c, "x"), leaf(&c, "w"), meta("rmsnorm.eps")), 0);
    begin(&c, "rope");
    run_case(&c, loom_rope(c.g, leaf(&c, "x"), leaf(&c, "positions"), (int)meta("rope.n_head"),
                           meta("rope.theta")), 0);
    const char *attn[] = {"attention", "attention_mha"};
    for (int i = 0; i < 2; i++) {
        char h[64], kv[64];
        snprintf(h, sizeof h, "%s.n_head", attn[i]);
        snprintf(kv, sizeof kv, "%s.n_kv_head", attn[i]);
        begin(&c, attn[i]);
        run_case(&c, loom_attention(c.g, leaf(&c, "q"), leaf(&c, "k"), leaf(&c, "v"),
                                    (int)meta(h), (int)meta(kv)), 0);
    }
    begin(&c, "cross_entropy");
    run_case(&c, loom_cross_entropy(c.g, leaf(&c, "logits"), leaf(&c, "targets"),
                                    (int)meta("cross_entropy.ignore_index")), 1);
}

// Optimizers on given gradients: p1, p2, p3 after each of three steps.
static void test_optimizers(void) {
    for (int opt = 0; opt < 2; opt++) {
        const char *name = opt ? "sgd" : "adamw";
        char key[64];
        int64_t n = 0;
        snprintf(key, sizeof key, "%s.p", name);
        float *p = fixture_f32(key, &n);
        float *m = calloc((size_t)n, sizeof(float)), *v = calloc((size_t)n, sizeof(float));
        for (int t = 1; t <= 3; t++) {
            int64_t ng;
            snprintf(key, sizeof key, "%s.g%d", name, t);
            float *grad = fixture_f32(key, &ng);
            if (opt == 0)
                loom_cpu_adamw_update(p, grad, m, v, n, meta("adamw.lr"), meta("adamw.beta1"),
                                      meta("adamw.beta2"), meta("adamw.eps"),
                                      meta("adamw.weight_decay"), t, 1.0f);
            else
                loom_cpu_sgd_update(p, grad, m, n, meta("sgd.lr"), meta("sgd.momentum"),
                                    meta("sgd.weight_decay"), t, 1.0f);
            snprintf(key, sizeof key, "%s.p%d", name, t);
            compare(name, p, key, 1e-6);
            free(grad);
        }
        free(p), free(m), free(v);
    }
}

int main(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/oracle/ops.safetensors", LOOM_TEST_DATA);
    if (loom_weights_open(path, &fx) < 0) {
        fprintf(stderr, "%s\n", loom_last_error());
        return 1;
    }
    test_ops();
    test_optimizers();
    loom_weights_close(fx);
    return tu_finish();
}
