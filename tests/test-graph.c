// Tests of the graph builder (scopes, shapes, roles, sticky errors), autodiff, the text dump,
// the GPT-2/LLaMA graph builders, and the lowered program's schedule and liveness memory plan.

#include "testutil.h"

#include "ir/ir.h"
#include "lower/program.h"
#include "loom/graph.h"
#include "loom/model.h"
#include "models/family.h"
#include "runtime/runner.h"

#include <math.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int has(const char *msg, const char *part) { return msg && strstr(msg, part) != NULL; }

static int shape_is(loom_graph_t g, loom_value v, int ndim, const int64_t *want) {
    if (v < 0 || v >= loom_graph_n_values(g)) return 0;
    int64_t s[LOOM_MAX_DIMS];
    if (loom_value_shape(g, v, s) != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (s[i] != want[i]) return 0;
    return 1;
}

// Expands to "ndim, shape" for the builder calls: SHAPE(2, 3) is 2, (int64_t[]){2, 3}.
#define SHAPE(...) \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

// ---- a hand-built MLP -------------------------------------------------------------------------

// Node and value handles of the MLP graph below.
typedef struct mlp {
    loom_graph_t g;
    loom_value x, targets, cache, w0, b0, w1;
    loom_value x0, hpre, h, y, side, loss;
    int n_x0, n_fc0, n_gelu, n_fc1, n_side, n_ce;  // node indices
} mlp;

// x (2,3,8) -> gelu [top, no parameter] -> mlp.0.fc (linear+bias, 16) -> gelu [mlp.0]
//   -> mlp.1.fc (linear, 4) -> cross-entropy [loss]; plus a side gelu of h that the loss ignores.
static void build_mlp(mlp *m) {
    memset(m, 0, sizeof *m);
    CHECK_OK(loom_graph_create(&m->g));
    loom_graph_t g = m->g;
    m->x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 3, 8));
    m->targets = loom_graph_input(g, "targets", LOOM_DTYPE_I32, SHAPE(2, 3));
    m->cache = loom_graph_state(g, "cache", SHAPE(2, 4));
    m->n_x0 = loom_graph_n_nodes(g);
    m->x0 = loom_gelu(g, m->x);
    loom_graph_push_scope(g, "mlp");
    loom_graph_push_scope(g, "0");
    loom_graph_push_scope(g, "fc");
    m->w0 = loom_graph_param(g, "mlp.0.fc.weight", SHAPE(16, 8));
    m->b0 = loom_graph_param(g, "mlp.0.fc.bias", SHAPE(16));
    m->n_fc0 = loom_graph_n_nodes(g);
    m->hpre = loom_linear(g, m->x0, m->w0, m->b0);
    loom_graph_pop_scope(g);
    m->n_gelu = loom_graph_n_nodes(g);
    m->h = loom_gelu(g, m->hpre);
    loom_graph_pop_scope(g);
    loom_graph_push_scopef(g, "%d", 1);
    loom_graph_push_scope(g, "fc");
    m->w1 = loom_graph_param(g, "mlp.1.fc.weight", SHAPE(4, 16));
    m->n_fc1 = loom_graph_n_nodes(g);
    m->y = loom_linear(g, m->h, m->w1, LOOM_NONE);
    loom_graph_pop_scope(g);
    loom_graph_pop_scope(g);
    loom_graph_pop_scope(g);
    loom_graph_push_scope(g, "side.branch");  // a component may contain dots
    m->n_side = loom_graph_n_nodes(g);
    m->side = loom_gelu(g, m->h);
    loom_graph_mark_output(g, m->side);
    loom_graph_pop_scope(g);
    loom_graph_push_scope(g, "loss");
    m->n_ce = loom_graph_n_nodes(g);
    m->loss = loom_cross_entropy(g, m->y, m->targets, -100);
    loom_graph_mark_output(g, m->loss);
    loom_graph_pop_scope(g);
    CHECK_MSG(loom_graph_status(g) == 0, "%s", loom_graph_error(g));
}

static void test_builder(void) {
    mlp m;
    build_mlp(&m);
    loom_graph_t g = m.g;
    CHECK(loom_graph_n_nodes(g) == 6);
    CHECK(m.n_x0 == 0 && m.n_fc0 == 1 && m.n_gelu == 2 && m.n_fc1 == 3 && m.n_side == 4 &&
          m.n_ce == 5);
    // Leaves 6, node outputs 1+1+1+1+1+3.
    CHECK(loom_graph_n_values(g) == 14);

    // Module paths.
    CHECK(strcmp(loom_node_module(g, m.n_x0), "") == 0);
    CHECK(strcmp(loom_node_module(g, m.n_fc0), "mlp.0.fc") == 0);
    CHECK(strcmp(loom_node_module(g, m.n_gelu), "mlp.0") == 0);
    CHECK(strcmp(loom_node_module(g, m.n_fc1), "mlp.1.fc") == 0);
    CHECK(strcmp(loom_node_module(g, m.n_side), "side.branch") == 0);
    CHECK(strcmp(loom_node_module(g, m.n_ce), "loss") == 0);

    // Signatures and annotations.
    CHECK(strcmp(loom_node_signature(g, m.n_x0), "loom.gelu") == 0);
    CHECK(strcmp(loom_node_signature(g, m.n_fc0), "loom.linear_bias") == 0);
    CHECK(strcmp(loom_node_signature(g, m.n_fc1), "loom.linear") == 0);
    CHECK(strcmp(loom_node_signature(g, m.n_ce), "loom.cross_entropy") == 0);
    CHECK(strcmp(loom_node_annotation(g, m.n_fc0), "* k+, n k+, n -> * n") == 0);
    CHECK(strcmp(loom_node_annotation(g, m.n_fc1), "* k+, n k+ -> * n") == 0);
    CHECK(strcmp(loom_node_annotation(g, m.n_gelu), "* -> *") == 0);
    for (int i = 0; i < loom_graph_n_nodes(g); i++) {
        CHECK(!loom_node_is_backward(g, i));
        CHECK_OK(loom_annotation_check(loom_node_annotation(g, i)));
    }

    // Shapes and dtypes.
    CHECK(shape_is(g, m.x0, SHAPE(2, 3, 8)));
    CHECK(shape_is(g, m.hpre, SHAPE(2, 3, 16)));
    CHECK(shape_is(g, m.h, SHAPE(2, 3, 16)));
    CHECK(shape_is(g, m.y, SHAPE(2, 3, 4)));
    CHECK(shape_is(g, m.side, SHAPE(2, 3, 16)));
    CHECK(shape_is(g, m.loss, SHAPE(1)));
    CHECK(loom_value_numel(g, m.h) == 96);
    CHECK(loom_value_numel(g, m.loss) == 1);
    CHECK(loom_value_dtype(g, m.targets) == LOOM_DTYPE_I32);
    CHECK(loom_value_dtype(g, m.y) == LOOM_DTYPE_F32);

    // Roles and names.
    CHECK(loom_value_role(g, m.x) == LOOM_ROLE_INPUT);
    CHECK(loom_value_role(g, m.targets) == LOOM_ROLE_INPUT);
    CHECK(loom_value_role(g, m.cache) == LOOM_ROLE_STATE);
    CHECK(loom_value_role(g, m.w0) == LOOM_ROLE_PARAM);
    CHECK(loom_value_role(g, m.b0) == LOOM_ROLE_PARAM);
    CHECK(loom_value_role(g, m.h) == LOOM_ROLE_ACTIVATION);
    CHECK(loom_value_role(g, m.loss) == LOOM_ROLE_ACTIVATION);
    CHECK(strcmp(loom_role_name(LOOM_ROLE_PARAM), "param") == 0);
    CHECK(strcmp(loom_role_name(LOOM_ROLE_GRADIENT), "gradient") == 0);
    CHECK(strcmp(loom_value_name(g, m.w0), "mlp.0.fc.weight") == 0);
    CHECK(loom_graph_find(g, "mlp.0.fc.weight") == m.w0);
    CHECK(loom_graph_find(g, "mlp.1.fc.weight") == m.w1);
    CHECK(loom_graph_find(g, "x") == m.x);
    CHECK(loom_graph_find(g, "cache") == m.cache);
    CHECK(loom_graph_find(g, "mlp.2.fc.weight") == LOOM_NONE);
    CHECK(loom_graph_find(g, "") == LOOM_NONE);

    // FLOPs: a matrix product is 2*M*K*N; elementwise ops one per output element.
    CHECK(loom_node_flops(g, m.n_fc0) == 2.0 * 6 * 8 * 16);
    CHECK(loom_node_flops(g, m.n_fc1) == 2.0 * 6 * 16 * 4);
    CHECK(loom_node_flops(g, m.n_gelu) == 96.0);
    loom_graph_destroy(g);
    loom_graph_destroy(NULL);
}

// ---- sticky errors ----------------------------------------------------------------------------

static void test_sticky_shape_error(void) {
    loom_graph_t g;
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 3, 8));
    loom_graph_push_scope(g, "enc");
    loom_graph_push_scope(g, "fc");
    loom_value w = loom_graph_param(g, "enc.fc.weight", SHAPE(5, 7));  // k = 7, x has 8
    CHECK(loom_graph_status(g) == 0);
    loom_value y = loom_linear(g, x, w, LOOM_NONE);
    CHECK(y == LOOM_NONE);
    CHECK(loom_graph_status(g) == LOOM_ERR_SHAPE);
    const char *err = loom_graph_error(g);
    CHECK_MSG(has(err, "loom.linear"), "%s", err);
    CHECK_MSG(has(err, "enc.fc"), "%s", err);
    CHECK_MSG(has(err, "'k'"), "%s", err);
    CHECK_MSG(strcmp(err, loom_last_error()) == 0, "graph error '%s' vs last error '%s'", err,
              loom_last_error());
    char *saved = strdup(err);
    int n_values = loom_graph_n_values(g);
    CHECK(loom_graph_n_nodes(g) == 0);

    // Everything after the failure is a no-op returning LOOM_NONE; the first error stays.
    CHECK(loom_gelu(g, x) == LOOM_NONE);
    CHECK(loom_graph_param(g, "later", SHAPE(4)) == LOOM_NONE);
    CHECK(loom_graph_input(g, "later_in", LOOM_DTYPE_F32, SHAPE(4)) == LOOM_NONE);
    CHECK(loom_slice(g, x, 0, 100) == LOOM_NONE);
    CHECK(loom_attention(g, x, x, x, 3, 2) == LOOM_NONE);
    loom_graph_pop_scope(g);
    loom_graph_pop_scope(g);
    CHECK(loom_graph_status(g) == LOOM_ERR_SHAPE);
    CHECK(strcmp(loom_graph_error(g), saved) == 0);
    CHECK(loom_graph_n_nodes(g) == 0);
    CHECK(loom_graph_n_values(g) == n_values);
    CHECK(loom_graph_backward(g, x) == LOOM_ERR_SHAPE);
    // A failed graph does not lower.
    loom_program *p = NULL;
    loom_lower_options lo = {.train = 0, .micro_batches = 1};
    CHECK(loom__lower(g, &lo, &p) < 0 && p == NULL);
    free(saved);
    loom_graph_destroy(g);
}

// A fresh graph with one failing builder call made by `fn`; checks status and message words.
typedef loom_value (*failing_fn)(loom_graph_t g);

static void check_fails(const char *what, failing_fn fn, loom_status want, const char *w1,
                        const char *w2) {
    loom_graph_t g;
    CHECK_OK(loom_graph_create(&g));
    loom_value v = fn(g);
    const char *err = loom_graph_error(g);
    CHECK_MSG(v == LOOM_NONE, "%s: returned value %d", what, v);
    CHECK_MSG(loom_graph_status(g) == want, "%s: status %s, expected %s (%s)", what,
              loom_status_name(loom_graph_status(g)), loom_status_name(want), err);
    if (w1) CHECK_MSG(has(err, w1), "%s: message lacks '%s': %s", what, w1, err);
    if (w2) CHECK_MSG(has(err, w2), "%s: message lacks '%s': %s", what, w2, err);
    loom_graph_destroy(g);
}

static loom_value dup_param(loom_graph_t g) {
    loom_graph_param(g, "w", SHAPE(4, 4));
    return loom_graph_param(g, "w", SHAPE(4, 4));
}
static loom_value dup_input_param(loom_graph_t g) {
    loom_graph_input(g, "tokens", LOOM_DTYPE_I32, SHAPE(2, 3));
    return loom_graph_param(g, "tokens", SHAPE(4));
}
static loom_value float_indices(loom_graph_t g) {
    loom_value idx = loom_graph_input(g, "idx", LOOM_DTYPE_F32, SHAPE(2, 3));
    loom_value w = loom_graph_param(g, "emb", SHAPE(10, 4));
    loom_graph_push_scope(g, "wte");
    return loom_embedding(g, idx, w);
}
static loom_value int_linear_input(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "ids", LOOM_DTYPE_I32, SHAPE(2, 4));
    return loom_linear(g, x, loom_graph_param(g, "w", SHAPE(3, 4)), LOOM_NONE);
}
static loom_value bad_gqa(loom_graph_t g) {
    loom_value q = loom_graph_input(g, "q", LOOM_DTYPE_F32, SHAPE(1, 4, 48));
    loom_value k = loom_graph_input(g, "k", LOOM_DTYPE_F32, SHAPE(1, 4, 32));
    loom_graph_push_scope(g, "blk");
    return loom_attention(g, q, k, k, 6, 4);  // 6 query heads over 4 kv heads
}
static loom_value attention_kv_width(loom_graph_t g) {
    loom_value q = loom_graph_input(g, "q", LOOM_DTYPE_F32, SHAPE(1, 4, 48));
    loom_value k = loom_graph_input(g, "k", LOOM_DTYPE_F32, SHAPE(1, 4, 24));  // not 2 * 8
    return loom_attention(g, q, k, k, 6, 2);  // head dim 8 from q: k should be 16 wide
}
static loom_value odd_rope(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(1, 4, 6));
    loom_value pos = loom_graph_input(g, "pos", LOOM_DTYPE_I32, SHAPE(1, 4));
    return loom_rope(g, x, pos, 2, 10000.0f);  // head dim 3
}
static loom_value slice_past_end(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 8));
    return loom_slice(g, x, 6, 4);
}
static loom_value slice_negative(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 8));
    return loom_slice(g, x, -1, 2);
}
static loom_value slice_empty(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 8));
    return loom_slice(g, x, 0, 0);
}
static loom_value add_mismatch(loom_graph_t g) {
    loom_value a = loom_graph_input(g, "a", LOOM_DTYPE_F32, SHAPE(2, 8));
    loom_value b = loom_graph_input(g, "b", LOOM_DTYPE_F32, SHAPE(2, 9));
    return loom_add(g, a, b);
}
static loom_value not_a_value(loom_graph_t g) {
    loom_graph_input(g, "a", LOOM_DTYPE_F32, SHAPE(2, 8));
    return loom_gelu(g, 999);
}
static loom_value f16_input(loom_graph_t g) {
    return loom_graph_input(g, "h", LOOM_DTYPE_F16, SHAPE(2, 8));
}
static loom_value zero_dim(loom_graph_t g) { return loom_graph_param(g, "w", SHAPE(4, 0)); }
static loom_value empty_name(loom_graph_t g) { return loom_graph_param(g, "", SHAPE(4)); }
static loom_value zero_eps(loom_graph_t g) {
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 8));
    loom_value w = loom_graph_param(g, "w", SHAPE(8));
    return loom_layer_norm(g, x, w, w, 0.0f);
}
static loom_value cached_without_state(loom_graph_t g) {
    loom_value q = loom_graph_input(g, "q", LOOM_DTYPE_F32, SHAPE(1, 1, 16));
    loom_value c = loom_graph_input(g, "c", LOOM_DTYPE_F32, SHAPE(1, 8, 16));
    loom_value pos = loom_graph_input(g, "pos", LOOM_DTYPE_I32, SHAPE(1, 1));
    return loom_attention_cached(g, q, q, q, c, c, pos, 2, 2);
}

// A value with 0 dims: the builder's message says "1..6 allowed", so it must be refused (and
// without reading the NULL shape).
static int zero_rank_input(void) {
    loom_graph_t g;
    if (loom_graph_create(&g) < 0) return 2;
    loom_value v = loom_graph_input(g, "s", LOOM_DTYPE_F32, 0, NULL);
    int ok = v == LOOM_NONE && loom_graph_status(g) == LOOM_ERR_INVALID;
    if (!ok) fprintf(stderr, "0-dim input: value %d, status %d\n", v, loom_graph_status(g));
    loom_graph_destroy(g);
    return ok ? 0 : 3;
}

static int too_many_dims(void) {
    loom_graph_t g;
    if (loom_graph_create(&g) < 0) return 2;
    int64_t shape[LOOM_MAX_DIMS + 1] = {1, 1, 1, 1, 1, 1, 1};
    loom_value v = loom_graph_param(g, "w", LOOM_MAX_DIMS + 1, shape);
    int ok = v == LOOM_NONE && loom_graph_status(g) == LOOM_ERR_INVALID;
    loom_graph_destroy(g);
    return ok ? 0 : 3;
}

static void test_builder_errors(void) {
    int rc = tu_in_child(zero_rank_input);
    CHECK_MSG(rc == 0, "0-dim input: child %s %d", rc >= 128 ? "died of signal" : "exited",
              rc >= 128 ? rc - 128 : rc);
    rc = tu_in_child(too_many_dims);
    CHECK_MSG(rc == 0, "7-dim param: child status %d", rc);

    check_fails("duplicate param", dup_param, LOOM_ERR_INVALID, "'w'", "already");
    check_fails("param named like an input", dup_input_param, LOOM_ERR_INVALID, "'tokens'", NULL);
    check_fails("float embedding indices", float_indices, LOOM_ERR_INVALID, "loom.embedding",
                "I32");
    check_fails("int linear input", int_linear_input, LOOM_ERR_INVALID, "loom.linear", "F32");
    check_fails("n_head not a multiple of n_kv_head", bad_gqa, LOOM_ERR_INVALID, "n_kv_head",
                "blk");
    check_fails("attention k width", attention_kv_width, LOOM_ERR_SHAPE, "loom.attention", NULL);
    check_fails("rope odd head dim", odd_rope, LOOM_ERR_INVALID, "loom.rope", "even");
    check_fails("slice past the end", slice_past_end, LOOM_ERR_INVALID, "loom.slice", "8");
    check_fails("slice negative start", slice_negative, LOOM_ERR_INVALID, "loom.slice", NULL);
    check_fails("empty slice", slice_empty, LOOM_ERR_INVALID, "loom.slice", NULL);
    check_fails("add mismatch", add_mismatch, LOOM_ERR_SHAPE, "loom.add", NULL);
    check_fails("not a value", not_a_value, LOOM_ERR_INVALID, "loom.gelu", NULL);
    check_fails("f16 input", f16_input, LOOM_ERR_UNSUPPORTED, "'h'", NULL);
    check_fails("zero-length dim", zero_dim, LOOM_ERR_SHAPE, "'w'", NULL);
    check_fails("empty name", empty_name, LOOM_ERR_INVALID, NULL, NULL);
    check_fails("layer norm eps 0", zero_eps, LOOM_ERR_INVALID, "eps", NULL);
    check_fails("cached attention over inputs", cached_without_state, LOOM_ERR_INVALID, "state",
                NULL);

    // The same ops with valid arguments work, with shapes from the annotations.
    loom_graph_t g;
    CHECK_OK(loom_graph_create(&g));
    loom_value q = loom_graph_input(g, "q", LOOM_DTYPE_F32, SHAPE(2, 5, 48));
    loom_value k = loom_graph_input(g, "k", LOOM_DTYPE_F32, SHAPE(2, 5, 16));
    loom_value pos = loom_graph_input(g, "pos", LOOM_DTYPE_I32, SHAPE(2, 5));
    loom_value a = loom_attention(g, q, k, k, 6, 2);  // head dim 8, 3 query heads per kv head
    CHECK(shape_is(g, a, SHAPE(2, 5, 48)));
    int n_att = loom_graph_n_nodes(g) - 1;
    if (n_att >= 0 && g->nodes[n_att].n_out == 2)  // saved (b, heads, s)
        CHECK(shape_is(g, g->nodes[n_att].out[1], SHAPE(2, 6, 5)));
    CHECK(shape_is(g, loom_rope(g, q, pos, 6, 10000.0f), SHAPE(2, 5, 48)));
    CHECK(shape_is(g, loom_slice(g, q, 40, 8), SHAPE(2, 5, 8)));
    loom_value e = loom_embedding(g, pos, loom_graph_param(g, "emb", SHAPE(11, 7)));
    CHECK(shape_is(g, e, SHAPE(2, 5, 7)));
    loom_value c1 = loom_conv1d(g, e, loom_graph_param(g, "c.weight", SHAPE(7, 9)),
                                loom_graph_param(g, "c.bias", SHAPE(9)));
    CHECK(shape_is(g, c1, SHAPE(2, 5, 9)));
    CHECK(shape_is(g, loom_matmul(g, q, loom_graph_input(g, "m", LOOM_DTYPE_F32, SHAPE(2, 48, 3))),
                   SHAPE(2, 5, 3)));
    CHECK_MSG(loom_graph_status(g) == 0, "%s", loom_graph_error(g));
    loom_graph_destroy(g);
}

// ---- autodiff ---------------------------------------------------------------------------------

static void test_autodiff(void) {
    mlp m;
    build_mlp(&m);
    loom_graph_t g = m.g;
    int n_fwd = loom_graph_n_nodes(g), n_values = loom_graph_n_values(g);
    CHECK_OK(loom_graph_backward(g, m.loss));

    // Parameters get a gradient with their shape; inputs, state and values off the parameter
    // path do not.
    loom_value params[] = {m.w0, m.b0, m.w1};
    for (int i = 0; i < 3; i++) {
        loom_value p = params[i], gp = loom_graph_grad(g, p);
        CHECK_MSG(gp != LOOM_NONE, "%s has no gradient", loom_value_name(g, p));
        if (gp == LOOM_NONE) continue;
        int64_t s[LOOM_MAX_DIMS];
        int nd = loom_value_shape(g, p, s);
        CHECK(shape_is(g, gp, nd, s));
        CHECK(loom_value_role(g, gp) == LOOM_ROLE_GRADIENT);
        CHECK(loom_value_dtype(g, gp) == LOOM_DTYPE_F32);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", loom_value_name(g, p));
        CHECK(loom_graph_find(g, name) == gp);
    }
    CHECK(loom_graph_grad(g, m.x) == LOOM_NONE);
    CHECK(loom_graph_grad(g, m.targets) == LOOM_NONE);
    CHECK(loom_graph_grad(g, m.cache) == LOOM_NONE);
    CHECK(loom_graph_grad(g, m.x0) == LOOM_NONE);    // depends on no parameter
    CHECK(loom_graph_grad(g, m.side) == LOOM_NONE);  // the loss does not depend on it
    CHECK(loom_graph_grad(g, LOOM_NONE) == LOOM_NONE);
    CHECK(shape_is(g, loom_graph_grad(g, m.h), SHAPE(2, 3, 16)));
    CHECK(shape_is(g, loom_graph_grad(g, m.hpre), SHAPE(2, 3, 16)));
    CHECK(shape_is(g, loom_graph_grad(g, m.y), SHAPE(2, 3, 4)));
    CHECK(shape_is(g, loom_graph_grad(g, m.loss), SHAPE(1)));

    // Backward nodes: one per forward node that is on the loss path and depends on a
    // parameter: fc0, gelu, fc1, cross-entropy (not the input-only gelu, not the side branch).
    int n_bwd = 0, seen[16] = {0};
    for (int i = 0; i < loom_graph_n_nodes(g); i++) {
        if (!loom_node_is_backward(g, i)) {
            CHECK(i < n_fwd);
            continue;
        }
        n_bwd++;
        CHECK(i >= n_fwd);
        int f = g->nodes[i].fwd;
        CHECK(f >= 0 && f < n_fwd);
        if (f < 0 || f >= n_fwd) continue;
        seen[f]++;
        CHECK(strcmp(loom_node_module(g, i), loom_node_module(g, f)) == 0);
        CHECK(strcmp(loom_node_signature(g, i), loom_node_signature(g, f)) == 0);
        // Backward FLOPs: twice the forward for these ops (matrix products: dx and dw).
        if (f != m.n_ce) CHECK(loom_node_flops(g, i) == 2 * loom_node_flops(g, f));
    }
    CHECK_MSG(n_bwd == 4, "%d backward nodes, expected 4", n_bwd);
    CHECK(seen[m.n_fc0] == 1 && seen[m.n_gelu] == 1 && seen[m.n_fc1] == 1 && seen[m.n_ce] == 1);
    CHECK(seen[m.n_x0] == 0 && seen[m.n_side] == 0);
    // Backward nodes run in reverse forward order.
    int last_f = n_fwd;
    for (int i = n_fwd; i < loom_graph_n_nodes(g); i++) {
        CHECK(g->nodes[i].fwd < last_f);
        last_f = g->nodes[i].fwd;
    }
    // 7 gradients: loss, y, h, hpre, w1, w0, b0.
    CHECK_MSG(loom_graph_n_values(g) == n_values + 7, "%d values after backward, expected %d",
              loom_graph_n_values(g), n_values + 7);

    // A second backward is refused; so are forward ops after the backward.
    CHECK(loom_graph_backward(g, m.loss) == LOOM_ERR_INVALID);
    CHECK_MSG(has(loom_last_error(), "already"), "%s", loom_last_error());
    CHECK(loom_graph_status(g) == 0);  // the refusal is not a builder error
    CHECK(loom_gelu(g, m.h) == LOOM_NONE);
    CHECK(loom_graph_status(g) == LOOM_ERR_INVALID);
    CHECK_MSG(has(loom_graph_error(g), "backward"), "%s", loom_graph_error(g));
    loom_graph_destroy(g);

    // The loss must be a scalar that depends on a parameter.
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(2, 4));
    loom_value t = loom_graph_input(g, "t", LOOM_DTYPE_I32, SHAPE(2));
    loom_value y = loom_linear(g, x, loom_graph_param(g, "w", SHAPE(3, 4)), LOOM_NONE);
    loom_value free_loss = loom_cross_entropy(g, x, t, -100);  // no parameter involved
    CHECK(loom_graph_status(g) == 0);
    CHECK(loom_graph_backward(g, y) == LOOM_ERR_INVALID);
    CHECK_MSG(has(loom_last_error(), "scalar"), "%s", loom_last_error());
    loom_value ts = loom_graph_input(g, "ts", LOOM_DTYPE_I32, SHAPE(1));
    CHECK(loom_graph_backward(g, ts) == LOOM_ERR_INVALID);  // an int scalar is no loss either
    CHECK(loom_graph_backward(g, LOOM_NONE) == LOOM_ERR_INVALID);
    CHECK(loom_graph_backward(g, 12345) == LOOM_ERR_INVALID);
    CHECK(loom_graph_backward(g, free_loss) == LOOM_ERR_INVALID);
    CHECK_MSG(has(loom_last_error(), "parameter"), "%s", loom_last_error());
    CHECK(loom_graph_grad(g, x) == LOOM_NONE);
    // Failed backward calls leave the graph usable: a valid loss still works.
    loom_value loss = loom_cross_entropy(g, y, t, -100);
    CHECK_OK(loom_graph_backward(g, loss));
    CHECK(loom_graph_grad(g, loom_graph_find(g, "w")) != LOOM_NONE);
    loom_graph_destroy(g);
}

// ---- dump -------------------------------------------------------------------------------------

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

static void test_dump(void) {
    mlp m;
    build_mlp(&m);
    loom_graph_t g = m.g;
    CHECK_OK(loom_graph_backward(g, m.loss));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL);
    if (!f) return;
    CHECK_OK(loom_graph_dump(g, f));
    fclose(f);
    const char *want[] = {
        "graph: 10 nodes, 21 values (2 input, 3 param, 8 activation, 7 gradient, 1 state)",
        "x:F32[2,3,8]",
        "targets:I32[2,3]",
        "cache:F32[2,4]",
        "mlp.0.fc.weight:F32[16,8]",
        "mlp.0.fc.bias:F32[16]",
        "grad.mlp.1.fc.weight:F32[4,16]",
        "loom.linear_bias  @mlp.0.fc",
        "loom.linear  @mlp.1.fc",
        "loom.gelu  @mlp.0",
        "loom.gelu  @side.branch",
        "loom.cross_entropy  @loss",
        "loom.gelu  @(top)",
        "loom.linear_bias.backward  @mlp.0.fc",
        "[2,3,16]",
        "\"* k+, n k+, n -> * n\"",
        "\"* k+, n k+ -> * n\"",
        "\"* v+, * -> 1, *, *\"",
        "of node 1",
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        CHECK_MSG(has(buf, want[i]), "dump lacks '%s':\n%s", want[i], buf);
    // One header line, one line per leaf (2 inputs, 3 params, 1 state), one per node.
    CHECK_MSG(count_char(buf, '\n') == 1 + 6 + 10, "%d lines:\n%s", count_char(buf, '\n'), buf);
    free(buf);
    loom_graph_destroy(g);
}

// ---- models -----------------------------------------------------------------------------------

static loom_model_config small_gpt2(void) {
    loom_model_config c = loom_model_config_default(LOOM_FAMILY_GPT2);
    c.vocab_size = 64;
    c.max_seq = 16;
    c.n_embd = 32;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = 4;
    c.head_dim = 8;
    c.n_inner = 128;
    return c;
}

static loom_model_config small_llama(void) {
    loom_model_config c = loom_model_config_default(LOOM_FAMILY_LLAMA);
    c.vocab_size = 64;
    c.max_seq = 16;
    c.n_embd = 32;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = 2;
    c.head_dim = 8;
    c.n_inner = 64;
    return c;
}

// Parameter elements from the architecture, counted by hand.
static int64_t expected_params(const loom_model_config *c) {
    int64_t V = c->vocab_size, C = c->n_embd, F = c->n_inner, L = c->n_layer, P = c->max_seq;
    if (c->family == LOOM_FAMILY_GPT2) {
        int64_t block = 2 * C                 // ln_1
                        + C * 3 * C + 3 * C   // c_attn
                        + C * C + C           // attn.c_proj
                        + 2 * C               // ln_2
                        + C * F + F           // c_fc
                        + F * C + C;          // mlp.c_proj
        return V * C + P * C + L * block + 2 * C;
    }
    int64_t Cq = (int64_t)c->n_head * c->head_dim, Ckv = (int64_t)c->n_kv_head * c->head_dim;
    int64_t block = C + C * Cq + 2 * C * Ckv + Cq * C + C + 3 * F * C;
    if (c->attention_bias) block += Cq + 2 * Ckv;
    if (c->o_bias) block += C;
    return V * C + L * block + C + (c->tie_word_embeddings ? 0 : V * C);
}

static int count_role(loom_graph_t g, loom_role r) {
    int n = 0;
    for (int v = 0; v < loom_graph_n_values(g); v++) n += loom_value_role(g, v) == r;
    return n;
}

static int count_sig(loom_graph_t g, const char *sig, int backward) {
    int n = 0;
    for (int i = 0; i < loom_graph_n_nodes(g); i++)
        n += !strcmp(loom_node_signature(g, i), sig) && loom_node_is_backward(g, i) == backward;
    return n;
}

// The output value (first output) of the last forward node in module `module`.
static loom_value last_output_in(loom_graph_t g, const char *module) {
    loom_value v = LOOM_NONE;
    for (int i = 0; i < loom_graph_n_nodes(g); i++)
        if (!loom_node_is_backward(g, i) && !strcmp(loom_node_module(g, i), module))
            v = g->nodes[i].out[0];
    return v;
}

static void check_model_graphs(const char *what, loom_model_config cfg) {
    loom_model_t m = NULL;
    loom_status st = loom_model_create(&cfg, 42, &m);
    CHECK_MSG(st == 0, "%s: %s", what, loom_last_error());
    if (st < 0) return;
    CHECK_MSG(loom_model_n_params(m) == expected_params(&cfg), "%s: %lld parameters, expected %lld",
              what, (long long)loom_model_n_params(m), (long long)expected_params(&cfg));
    const int B = 2, T = 8, V = cfg.vocab_size;
    int n_layer_nodes = cfg.n_layer;
    const char *head_module = "lm_head";

    // TRAIN: loss and logits, a gradient per parameter, backward nodes.
    loom_graph_t g = NULL;
    st = loom_model_build_graph(m, LOOM_GRAPH_TRAIN, B, T, 0, &g);
    CHECK_MSG(st == 0 && g, "%s train: %s", what, loom_last_error());
    if (g) {
        CHECK(loom_graph_status(g) == 0);
        CHECK(shape_is(g, loom_graph_find(g, "tokens"), SHAPE(2, 8)));
        CHECK(shape_is(g, loom_graph_find(g, "targets"), SHAPE(2, 8)));
        CHECK(loom_value_dtype(g, loom_graph_find(g, "tokens")) == LOOM_DTYPE_I32);
        loom_value logits = last_output_in(g, head_module);
        CHECK(shape_is(g, logits, SHAPE(B, T, V)));
        CHECK(count_sig(g, "loom.cross_entropy", 0) == 1);
        CHECK(count_sig(g, "loom.attention", 0) == n_layer_nodes);
        CHECK(count_sig(g, "loom.attention", 1) == n_layer_nodes);
        CHECK(count_sig(g, "loom.attention_cached", 0) == 0);
        // Parameters are the model's tensors, in model order, each with a gradient.
        int k = 0;
        for (int v = 0; v < loom_graph_n_values(g); v++) {
            if (loom_value_role(g, v) != LOOM_ROLE_PARAM) continue;
            int nd;
            int64_t shape[LOOM_MAX_DIMS];
            const char *name = loom_model_tensor_name(m, k++, &nd, shape);
            CHECK_MSG(name && !strcmp(name, loom_value_name(g, v)), "%s: param %d is '%s', model "
                      "tensor is '%s'", what, k - 1, loom_value_name(g, v), name ? name : "-");
            CHECK(shape_is(g, v, nd, shape));
            loom_value gv = loom_graph_grad(g, v);
            CHECK_MSG(gv != LOOM_NONE && shape_is(g, gv, nd, shape), "%s: %s has no gradient",
                      what, loom_value_name(g, v));
        }
        CHECK(k == loom_model_n_tensors(m));
        CHECK(loom_graph_grad(g, loom_graph_find(g, "tokens")) == LOOM_NONE);
        CHECK(loom_graph_grad(g, loom_graph_find(g, "positions")) == LOOM_NONE);
        // Every node annotation is well formed, and the module paths are the HF module names.
        for (int i = 0; i < loom_graph_n_nodes(g); i++)
            CHECK_OK(loom_annotation_check(loom_node_annotation(g, i)));
        loom_graph_destroy(g);
    }

    // FORWARD: logits only, no backward, no targets.
    g = NULL;
    st = loom_model_build_graph(m, LOOM_GRAPH_FORWARD, B, T, 0, &g);
    CHECK_MSG(st == 0 && g, "%s forward: %s", what, loom_last_error());
    if (g) {
        CHECK(shape_is(g, last_output_in(g, head_module), SHAPE(B, T, V)));
        CHECK(loom_graph_find(g, "targets") == LOOM_NONE);
        CHECK(count_role(g, LOOM_ROLE_GRADIENT) == 0);
        CHECK(count_sig(g, "loom.cross_entropy", 0) == 0);
        CHECK(count_role(g, LOOM_ROLE_PARAM) == loom_model_n_tensors(m));
        for (int i = 0; i < loom_graph_n_nodes(g); i++) CHECK(!loom_node_is_backward(g, i));
        loom_graph_destroy(g);
    }

    // DECODE: one new token per row over a cache of max_seq positions.
    g = NULL;
    st = loom_model_build_graph(m, LOOM_GRAPH_DECODE, 1, 1, cfg.max_seq, &g);
    CHECK_MSG(st == 0 && g, "%s decode: %s", what, loom_last_error());
    if (g) {
        CHECK(shape_is(g, last_output_in(g, head_module), SHAPE(1, 1, V)));
        CHECK(count_role(g, LOOM_ROLE_STATE) == 2 * cfg.n_layer);
        int64_t kv = (int64_t)cfg.n_kv_head * cfg.head_dim;
        for (int v = 0; v < loom_graph_n_values(g); v++)
            if (loom_value_role(g, v) == LOOM_ROLE_STATE)
                CHECK_MSG(shape_is(g, v, SHAPE(1, cfg.max_seq, kv)), "%s: cache %s", what,
                          loom_value_name(g, v));
        CHECK(count_sig(g, "loom.attention_cached", 0) == n_layer_nodes);
        CHECK(count_sig(g, "loom.attention", 0) == 0);
        CHECK(count_role(g, LOOM_ROLE_GRADIENT) == 0);
        loom_graph_destroy(g);
    }

    // Bad sizes.
    g = NULL;
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 0, T, 0, &g) == LOOM_ERR_INVALID && !g);
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_FORWARD, B, 0, 0, &g) == LOOM_ERR_INVALID && !g);
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_DECODE, 1, 4, 2, &g) == LOOM_ERR_INVALID && !g);
    loom_model_free(m);
}

static void test_models(void) {
    check_model_graphs("gpt2", small_gpt2());
    check_model_graphs("llama", small_llama());
    loom_model_config tied = small_llama();
    tied.tie_word_embeddings = 1;
    tied.attention_bias = 1;
    tied.o_bias = 1;
    check_model_graphs("llama tied with biases", tied);

    // GPT-2 has learned positions: longer sequences than n_positions are refused, by name.
    loom_model_config c = small_gpt2();
    loom_model_t m = NULL;
    CHECK_OK(loom_model_create(&c, 1, &m));
    if (!m) return;
    loom_graph_t g = NULL;
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 1, c.max_seq + 1, 0, &g) < 0 && !g);
    CHECK_MSG(has(loom_last_error(), "n_positions") && has(loom_last_error(), "17"), "%s",
              loom_last_error());
    CHECK(loom_model_build_graph(m, LOOM_GRAPH_DECODE, 1, 1, c.max_seq + 1, &g) < 0 && !g);
    CHECK_MSG(has(loom_last_error(), "n_positions"), "%s", loom_last_error());
    CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 1, c.max_seq, 0, &g));
    loom_graph_destroy(g);
    loom_model_free(m);
}

// ---- lowering: schedule and memory plan -------------------------------------------------------

static size_t value_bytes(loom_graph_t g, loom_value v) {
    return (size_t)loom_value_numel(g, v) * loom_dtype_size(loom_value_dtype(g, v));
}

typedef struct live {
    int *first, *last;  // per micro-step * n_values
    int n_values, micro;
} live;

static void use(live *l, int m, loom_value v, int instr) {
    if (v < 0) return;
    int *f = &l->first[m * l->n_values + v], *la = &l->last[m * l->n_values + v];
    if (*f < 0) *f = instr;
    *la = instr;
}

// Liveness from the instruction list, per micro-step: what each instruction reads or writes.
static void compute_liveness(const loom_program *p, live *l) {
    const loom_graph *g = p->graph;
    l->n_values = g->n_values;
    l->micro = p->micro_batches;
    size_t n = (size_t)l->micro * (size_t)l->n_values;
    l->first = malloc(n * sizeof(int));
    l->last = malloc(n * sizeof(int));
    for (size_t i = 0; i < n; i++) l->first[i] = l->last[i] = -1;
    for (int i = 0; i < p->n_instr; i++) {
        const loom_instr *in = &p->instr[i];
        int m = in->arg;
        if (in->kind == LOOM_INSTR_RECORD_LOSS) {
            use(l, m, p->loss, i);  // reads this micro-batch's loss
            continue;
        }
        if (in->kind == LOOM_INSTR_SEED_GRAD) {
            use(l, m, g->values[p->loss].grad, i);  // writes d(loss)
            continue;
        }
        if (in->kind != LOOM_INSTR_FORWARD && in->kind != LOOM_INSTR_BACKWARD) continue;
        const loom_node *nd = &g->nodes[in->node];
        for (int k = 0; k < nd->n_in; k++) use(l, m, nd->in[k], i);
        for (int k = 0; k < nd->n_out; k++) use(l, m, nd->out[k], i);
        if (nd->backward) {
            const loom_node *f = &g->nodes[nd->fwd];
            const loom_op_def *def = loom__op_def(f->op);
            for (int k = 0; k < f->n_in; k++)
                if (def->bwd_needs_in >> k & 1) use(l, m, f->in[k], i);
            for (int k = 0; k < f->n_out; k++)
                if (def->bwd_needs_out >> k & 1) use(l, m, f->out[k], i);
        }
    }
}

// The schedule: [zero] (load, forward..., [record], [seed, backward...]) x micro [clip, step];
// the loss is recorded whenever the graph has one (forward-only programs too).
static void check_schedule(const char *what, const loom_program *p) {
    const loom_graph *g = p->graph;
    int n_fwd = 0, n_bwd = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].backward) n_bwd++;
        else n_fwd++;
    }
    int record = p->loss >= 0;
    int want = p->micro_batches * (1 + n_fwd + record + (p->train ? 1 + n_bwd : 0)) +
               (p->train ? 3 : 0);
    CHECK_MSG(p->n_instr == want, "%s: %d instructions, expected %d", what, p->n_instr, want);
    int i = 0;
    if (p->train) CHECK(p->instr[i++].kind == LOOM_INSTR_ZERO_GRADS);
    for (int m = 0; m < p->micro_batches && i < p->n_instr; m++) {
        CHECK(p->instr[i].kind == LOOM_INSTR_LOAD_BATCH && p->instr[i].arg == m);
        i++;
        int prev = -1;
        for (int k = 0; k < n_fwd && i < p->n_instr; k++, i++) {
            CHECK(p->instr[i].kind == LOOM_INSTR_FORWARD && p->instr[i].arg == m);
            CHECK(p->instr[i].node > prev && !g->nodes[p->instr[i].node].backward);
            prev = p->instr[i].node;
        }
        if (record) CHECK(p->instr[i++].kind == LOOM_INSTR_RECORD_LOSS);
        if (!p->train) continue;
        CHECK(p->instr[i++].kind == LOOM_INSTR_SEED_GRAD);
        for (int k = 0; k < n_bwd && i < p->n_instr; k++, i++)
            CHECK(p->instr[i].kind == LOOM_INSTR_BACKWARD &&
                  g->nodes[p->instr[i].node].backward);
    }
    if (p->train && i + 2 == p->n_instr) {
        CHECK(p->instr[i].kind == LOOM_INSTR_CLIP_GRADS);
        CHECK(p->instr[i + 1].kind == LOOM_INSTR_OPTIMIZER_STEP);
    }
    // Accumulation flags: parameter gradients always add; an activation gradient is written by
    // its first producer in the micro-step and added to by the later ones.
    char *written = malloc((size_t)g->n_values);
    int bad = 0;
    for (int m = 0; m < p->micro_batches; m++) {
        memset(written, 0, (size_t)g->n_values);
        for (int j = 0; j < p->n_instr; j++) {
            const loom_instr *in = &p->instr[j];
            if (in->kind != LOOM_INSTR_BACKWARD || in->arg != m) continue;
            const loom_node *nd = &g->nodes[in->node];
            for (int k = 0; k < nd->n_out; k++) {
                loom_value gv = nd->out[k];
                if (gv < 0) continue;
                int want_acc = p->region[gv] == LOOM_REGION_PARAM_GRAD || written[gv];
                bad += ((in->acc_mask >> k) & 1) != (uint32_t)want_acc;
                written[gv] = 1;
            }
        }
    }
    CHECK_MSG(bad == 0, "%s: %d wrong accumulation flags", what, bad);
    free(written);
}

// Regions by role, non-overlapping persistent layouts, arena placement by liveness.
static void check_memory_plan(const char *what, loom_graph_t g, const loom_program *p,
                              loom_model_t model) {
    const int nv = g->n_values;
    live l;
    compute_liveness(p, &l);
    int bad_region = 0, unplaced = 0, unused_arena = 0, out_of_region = 0, misaligned = 0;
    size_t arena_sum = 0, arena_max = 0;
    for (int v = 0; v < nv; v++) {
        int used = 0;
        for (int m = 0; m < l.micro; m++) used |= l.first[m * nv + v] >= 0;
        int r = p->region[v];
        if (used && r == LOOM_REGION_NONE) unplaced++;
        if (r == LOOM_REGION_NONE) continue;
        const loom_value_info *vi = &g->values[v];
        int want;
        switch (vi->role) {
        case LOOM_ROLE_INPUT: want = LOOM_REGION_INPUT; break;
        case LOOM_ROLE_PARAM: want = LOOM_REGION_PARAM; break;
        case LOOM_ROLE_STATE: want = LOOM_REGION_PERSIST; break;
        case LOOM_ROLE_GRADIENT:
            want = g->values[vi->grad_of].role == LOOM_ROLE_PARAM ? LOOM_REGION_PARAM_GRAD
                   : vi->grad_of == p->loss                     ? LOOM_REGION_PERSIST
                                                                : LOOM_REGION_ARENA;
            break;
        // The loss is read after the forward pass (record_loss): persistent like an output.
        default: want = vi->is_output || v == p->loss ? LOOM_REGION_PERSIST : LOOM_REGION_ARENA; break;
        }
        if (r != want) {
            if (bad_region++ < 5)
                fprintf(stderr, "%s: value %s (role %s) in region %d, expected %d\n", what,
                        vi->name, loom_role_name(vi->role), r, want);
        }
        if (p->offset[v] + value_bytes(g, v) > p->region_bytes[r]) out_of_region++;
        if (p->offset[v] % 64 != 0) misaligned++;  // docs/programs.md: 64-byte aligned
        if (r == LOOM_REGION_ARENA) {
            if (!used) unused_arena++;
            arena_sum += value_bytes(g, v);
            if (value_bytes(g, v) > arena_max) arena_max = value_bytes(g, v);
        }
    }
    CHECK_MSG(bad_region == 0, "%s: %d values in the wrong region", what, bad_region);
    CHECK_MSG(unplaced == 0, "%s: %d values used by instructions have no region", what, unplaced);
    CHECK_MSG(unused_arena == 0, "%s: %d arena values no instruction uses", what, unused_arena);
    CHECK_MSG(out_of_region == 0, "%s: %d values extend past their region", what, out_of_region);
    CHECK_MSG(misaligned == 0, "%s: %d values at offsets that are not 64-byte aligned", what,
              misaligned);

    // Arena: values live at the same time in a micro-step must not share bytes.
    int conflicts = 0;
    for (int u = 0; u < nv; u++) {
        if (p->region[u] != LOOM_REGION_ARENA) continue;
        for (int v = u + 1; v < nv; v++) {
            if (p->region[v] != LOOM_REGION_ARENA) continue;
            int together = 0;
            for (int m = 0; m < l.micro && !together; m++) {
                int fu = l.first[m * nv + u], lu = l.last[m * nv + u];
                int fv = l.first[m * nv + v], lv = l.last[m * nv + v];
                together = fu >= 0 && fv >= 0 && !(lu < fv || lv < fu);
            }
            if (!together) continue;
            size_t ou = p->offset[u], ov = p->offset[v];
            if (ou < ov + value_bytes(g, v) && ov < ou + value_bytes(g, u)) {
                if (conflicts++ < 5)
                    fprintf(stderr, "%s: live-together %s [%zu, +%zu) and %s [%zu, +%zu) "
                            "overlap\n", what, g->values[u].name, ou, value_bytes(g, u),
                            g->values[v].name, ov, value_bytes(g, v));
            }
        }
    }
    CHECK_MSG(conflicts == 0, "%s: %d overlapping live arena pairs", what, conflicts);
    if (arena_sum > 0) {
        size_t arena = p->region_bytes[LOOM_REGION_ARENA];
        CHECK_MSG(arena < arena_sum, "%s: arena %zu bytes, sum of its values %zu (no reuse)",
                  what, arena, arena_sum);
        CHECK_MSG(arena >= arena_max, "%s: arena %zu < largest value %zu", what, arena,
                  arena_max);
    }

    // Persistent regions: no two values share bytes within a region (gradients of parameters
    // are the exception: they mirror the parameter layout in their own region).
    int shared = 0;
    for (int u = 0; u < nv; u++) {
        int r = p->region[u];
        if (r == LOOM_REGION_NONE || r == LOOM_REGION_ARENA) continue;
        for (int v = u + 1; v < nv; v++) {
            if (p->region[v] != r) continue;
            size_t ou = p->offset[u], ov = p->offset[v];
            if (ou < ov + value_bytes(g, v) && ov < ou + value_bytes(g, u)) shared++;
        }
    }
    CHECK_MSG(shared == 0, "%s: %d overlapping pairs in persistent regions", what, shared);

    // Parameters: gradients at the parameters' offsets; the PARAM region is the model's storage
    // (the runner binds it directly), so offsets must match the model's tensor layout.
    size_t n_floats = 0;
    float *base = model ? loom__model_storage(model, &n_floats) : NULL;
    if (model)
        CHECK_MSG(p->region_bytes[LOOM_REGION_PARAM] == n_floats * sizeof(float),
                  "%s: PARAM region %zu bytes, model storage %zu", what,
                  p->region_bytes[LOOM_REGION_PARAM], n_floats * sizeof(float));
    int n_params = 0, bad_grad = 0, bad_layout = 0;
    for (int v = 0; v < nv; v++) {
        if (g->values[v].role != LOOM_ROLE_PARAM) continue;
        n_params++;
        CHECK(p->region[v] == LOOM_REGION_PARAM);
        if (p->train) {
            loom_value gv = g->values[v].grad;
            if (gv < 0 || p->region[gv] != LOOM_REGION_PARAM_GRAD || p->offset[gv] != p->offset[v])
                bad_grad++;
        }
        if (model) {
            float *data = NULL;
            int64_t numel = 0;
            if (loom_model_tensor(model, g->values[v].name, &data, &numel) < 0 ||
                (size_t)(data - base) * sizeof(float) != p->offset[v] ||
                numel != loom_value_numel(g, v))
                bad_layout++;
        }
    }
    CHECK(p->n_params == n_params);
    CHECK_MSG(bad_grad == 0, "%s: %d parameter gradients not at their parameter's offset", what,
              bad_grad);
    CHECK_MSG(bad_layout == 0, "%s: %d parameters not at the model storage offsets", what,
              bad_layout);
    if (p->train)
        CHECK(p->region_bytes[LOOM_REGION_PARAM_GRAD] == p->region_bytes[LOOM_REGION_PARAM]);
    free(l.first);
    free(l.last);
}

static void lower_and_check(const char *what, loom_graph_t g, int train, int micro,
                            loom_model_t model) {
    loom_program *p = NULL;
    loom_lower_options lo = {.train = train, .micro_batches = micro};
    loom_status st = loom__lower(g, &lo, &p);
    CHECK_MSG(st == 0 && p, "%s: lowering: %s", what, loom_last_error());
    if (!p) return;
    CHECK(p->train == train);
    CHECK(p->micro_batches == (train ? micro : 1));
    if (train) CHECK(p->loss == g->loss && p->loss >= 0);
    check_schedule(what, p);
    check_memory_plan(what, g, p, model);
    loom__program_free(p);
}

static void test_memory_plan_models(void) {
    loom_model_config cfgs[2] = {small_gpt2(), small_llama()};
    const char *names[2] = {"gpt2", "llama"};
    for (int f = 0; f < 2; f++) {
        loom_model_t m = NULL;
        CHECK_OK(loom_model_create(&cfgs[f], 3, &m));
        if (!m) continue;
        char what[64];
        loom_graph_t g = NULL;
        CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_TRAIN, 2, 8, 0, &g));
        if (g) {
            snprintf(what, sizeof what, "%s train", names[f]);
            lower_and_check(what, g, 1, 1, m);
            snprintf(what, sizeof what, "%s train x2 micro-batches", names[f]);
            lower_and_check(what, g, 1, 2, m);
            snprintf(what, sizeof what, "%s train graph, forward only", names[f]);
            lower_and_check(what, g, 0, 1, m);
            loom_graph_destroy(g);
        }
        g = NULL;
        CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_FORWARD, 2, 8, 0, &g));
        if (g) {
            snprintf(what, sizeof what, "%s forward", names[f]);
            lower_and_check(what, g, 0, 1, m);
            // Training needs a backward pass.
            loom_program *p = NULL;
            loom_lower_options lo = {.train = 1, .micro_batches = 1};
            CHECK(loom__lower(g, &lo, &p) == LOOM_ERR_INVALID && !p);
            lo.train = 0;
            lo.micro_batches = 0;
            CHECK(loom__lower(g, &lo, &p) == LOOM_ERR_INVALID && !p);
            loom_graph_destroy(g);
        }
        g = NULL;
        CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_DECODE, 1, 1, 16, &g));
        if (g) {
            snprintf(what, sizeof what, "%s decode", names[f]);
            lower_and_check(what, g, 0, 1, m);
            loom_graph_destroy(g);
        }
        loom_model_free(m);
    }
}

// A C-API training graph whose loss is not marked as an output and is followed by another
// forward op: the loss is read by RECORD_LOSS after every forward instruction, so the op after
// it must not overwrite it.
static void test_memory_plan_unmarked_loss(void) {
    loom_graph_t g;
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, SHAPE(4, 64));
    loom_value t = loom_graph_input(g, "t", LOOM_DTYPE_I32, SHAPE(4));
    loom_value w = loom_graph_param(g, "w", SHAPE(8, 64));
    loom_value logits = loom_linear(g, x, w, LOOM_NONE);
    loom_value loss = loom_cross_entropy(g, logits, t, -100);
    loom_value after = loom_gelu(g, x);  // a forward op after the loss, result unused
    (void)after;
    CHECK_OK(loom_graph_backward(g, loss));
    lower_and_check("unmarked loss", g, 1, 1, NULL);
    lower_and_check("unmarked loss, 2 micro-batches", g, 1, 2, NULL);
    // Run it: with zero weights the logits are 0, so the loss is ln(8) whatever x is.
    loom_program *p = NULL;
    loom_lower_options lo = {.train = 1, .micro_batches = 1};
    CHECK_OK(loom__lower(g, &lo, &p));
    if (p) {
        float *params = calloc(1, p->region_bytes[LOOM_REGION_PARAM] + 64);
        loom_runner *r = NULL;
        CHECK_OK(loom__runner_create(p, loom__backend_cpu(), params, &r));  // takes p
        if (r) {
            r->skip_update = 1;
            float *xp = r->ptr[x];
            int32_t *tp = r->ptr[t];
            for (int i = 0; i < 4 * 64; i++) xp[i] = 1.0f + (float)(i % 7);
            for (int i = 0; i < 4; i++) tp[i] = i;
            CHECK_OK(loom__runner_run(r));
            CHECK_MSG(fabs(r->loss_sum - log(8.0)) < 1e-5,
                      "unmarked loss: recorded loss %g, expected ln 8 = %g", r->loss_sum,
                      log(8.0));
            loom__runner_free(r);
        }
        free(params);
    }
    loom_graph_destroy(g);

    // The hand-built MLP (marked loss, side branch, state) plans cleanly too.
    mlp m;
    build_mlp(&m);
    CHECK_OK(loom_graph_backward(m.g, m.loss));
    lower_and_check("mlp", m.g, 1, 1, NULL);
    lower_and_check("mlp x3 micro-batches", m.g, 1, 3, NULL);
    lower_and_check("mlp forward only", m.g, 0, 1, NULL);
    loom_graph_destroy(m.g);
}

int main(void) {
    test_builder();
    test_sticky_shape_error();
    test_builder_errors();
    test_autodiff();
    test_dump();
    test_models();
    test_memory_plan_models();
    test_memory_plan_unmarked_loss();
    return tu_finish();
}
