// Graph arena: values, nodes, module scopes, sticky builder errors, and inspection.

#include "ir/ir.h"

#include "core/core.h"

#include <stdarg.h>
#include <string.h>

const char *loom_role_name(loom_role r) {
    static const char *names[] = {"input", "param", "activation", "gradient", "state"};
    return (unsigned)r < LOOM_ROLE_COUNT ? names[r] : "?";
}

// ---- lifetime -----------------------------------------------------------------------------------

loom_status loom_graph_create(loom_graph_t *out) {
    *out = NULL;
    loom_graph *g = loom__calloc(1, sizeof *g);
    if (!g) return LOOM_ERR_NOMEM;
    g->current_module = -1;
    g->loss = -1;
    *out = g;
    // Module 0 is the top level "".
    g->modules = loom__malloc(16 * sizeof(char *));
    if (!g->modules) return loom_graph_destroy(g), *out = NULL, LOOM_ERR_NOMEM;
    g->cap_modules = 16;
    g->modules[0] = loom__strdup("");
    if (!g->modules[0]) return loom_graph_destroy(g), *out = NULL, LOOM_ERR_NOMEM;
    g->n_modules = 1;
    g->current_module = 0;
    return LOOM_OK;
}

void loom_graph_destroy(loom_graph_t g) {
    if (!g) return;
    for (int i = 0; i < g->n_values; i++) loom__free(g->values[i].name);
    for (int i = 0; i < g->n_modules; i++) loom__free(g->modules[i]);
    loom__free(g->values);
    loom__free(g->nodes);
    loom__free(g->modules);
    loom__free(g->error);
    loom__free(g);
}

loom_status loom_graph_status(loom_graph_t g) { return g->status; }

const char *loom_graph_error(loom_graph_t g) { return g->error ? g->error : ""; }

loom_value loom__graph_fail(loom_graph *g, loom_status st) {
    if (g->status == 0) {
        g->status = st;
        g->error = loom__strdup(loom_last_error());
    }
    return LOOM_NONE;
}

// ---- scopes -------------------------------------------------------------------------------------

static int32_t intern_module(loom_graph *g, const char *path) {
    for (int i = g->n_modules - 1; i >= 0; i--)
        if (strcmp(g->modules[i], path) == 0) return i;
    if (g->n_modules == g->cap_modules) {
        char **m = loom__realloc(g->modules, (size_t)g->cap_modules * 2 * sizeof(char *));
        if (!m) return -1;
        g->modules = m;
        g->cap_modules *= 2;
    }
    char *s = loom__strdup(path);
    if (!s) return -1;
    g->modules[g->n_modules] = s;
    return g->n_modules++;
}

void loom_graph_push_scope(loom_graph_t g, const char *name) {
    if (g->status) return;
    size_t cur = strlen(g->scope), add = strlen(name);
    if (g->scope_depth == 64 || cur + add + 2 > sizeof g->scope) {
        loom__error(LOOM_ERR_INVALID, "module scope too deep at '%s' + '%s'", g->scope, name);
        loom__graph_fail(g, LOOM_ERR_INVALID);
        return;
    }
    g->scope_len[g->scope_depth++] = (int)cur;
    if (cur) g->scope[cur++] = '.';
    memcpy(g->scope + cur, name, add + 1);
    g->current_module = intern_module(g, g->scope);
    if (g->current_module < 0) loom__graph_fail(g, LOOM_ERR_NOMEM);
}

void loom_graph_push_scopef(loom_graph_t g, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    loom_graph_push_scope(g, buf);
}

void loom_graph_pop_scope(loom_graph_t g) {
    if (g->status) return;
    LOOM_ASSERT(g->scope_depth > 0);
    g->scope[g->scope_len[--g->scope_depth]] = '\0';
    g->current_module = intern_module(g, g->scope);
    if (g->current_module < 0) loom__graph_fail(g, LOOM_ERR_NOMEM);
}

// ---- values -------------------------------------------------------------------------------------

int64_t loom__value_numel(const loom_graph *g, loom_value v) {
    int64_t n = 1;
    for (int i = 0; i < g->values[v].ndim; i++) n *= g->values[v].shape[i];
    return n;
}

size_t loom__value_bytes(const loom_graph *g, loom_value v) {
    return (size_t)loom__value_numel(g, v) * loom_dtype_size(g->values[v].dtype);
}

loom_value loom__graph_add_value(loom_graph *g, const char *name, loom_dtype dtype, int ndim,
                                 const int64_t *shape, loom_role role) {
    if (g->status) return LOOM_NONE;
    if (ndim < 1 || ndim > LOOM_MAX_DIMS || (ndim > 0 && !shape)) {
        loom__error(LOOM_ERR_INVALID, "value '%s': %d dims (1..%d allowed)", name ? name : "",
                    ndim, LOOM_MAX_DIMS);
        return loom__graph_fail(g, LOOM_ERR_INVALID);
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] <= 0) {
            loom__error(LOOM_ERR_SHAPE, "value '%s': dim %d has length %lld (must be > 0)",
                        name ? name : "", i, (long long)shape[i]);
            return loom__graph_fail(g, LOOM_ERR_SHAPE);
        }
    if (g->n_values == g->cap_values) {
        int cap = g->cap_values ? g->cap_values * 2 : 64;
        loom_value_info *v = loom__realloc(g->values, (size_t)cap * sizeof *v);
        if (!v) return loom__graph_fail(g, LOOM_ERR_NOMEM);
        g->values = v;
        g->cap_values = cap;
    }
    loom_value_info *vi = &g->values[g->n_values];
    memset(vi, 0, sizeof *vi);
    char generated[32];
    if (!name) {
        snprintf(generated, sizeof generated, "%%%d", g->n_values);
        name = generated;
    }
    vi->name = loom__strdup(name);
    if (!vi->name) return loom__graph_fail(g, LOOM_ERR_NOMEM);
    vi->dtype = dtype;
    vi->ndim = ndim;
    memcpy(vi->shape, shape, (size_t)ndim * sizeof(int64_t));
    vi->role = role;
    vi->producer = -1;
    vi->grad = -1;
    vi->grad_of = -1;
    return g->n_values++;
}

loom_value loom_graph_find(loom_graph_t g, const char *name) {
    for (int i = 0; i < g->n_values; i++)
        if (strcmp(g->values[i].name, name) == 0) return i;
    return LOOM_NONE;
}

static loom_value add_leaf(loom_graph *g, const char *name, loom_dtype dtype, int ndim,
                           const int64_t *shape, loom_role role) {
    if (g->status) return LOOM_NONE;
    if (!name || !*name) {
        loom__error(LOOM_ERR_INVALID, "a %s needs a non-empty name", loom_role_name(role));
        return loom__graph_fail(g, LOOM_ERR_INVALID);
    }
    if (loom_graph_find(g, name) != LOOM_NONE) {
        loom__error(LOOM_ERR_INVALID, "a value named '%s' already exists in the graph", name);
        return loom__graph_fail(g, LOOM_ERR_INVALID);
    }
    return loom__graph_add_value(g, name, dtype, ndim, shape, role);
}

loom_value loom_graph_input(loom_graph_t g, const char *name, loom_dtype dtype, int ndim,
                            const int64_t *shape) {
    if (dtype != LOOM_DTYPE_F32 && dtype != LOOM_DTYPE_I32) {
        loom__error(LOOM_ERR_UNSUPPORTED, "input '%s': dtype %s (graph inputs are F32 or I32)",
                    name ? name : "", loom_dtype_name(dtype));
        return loom__graph_fail(g, LOOM_ERR_UNSUPPORTED);
    }
    return add_leaf(g, name, dtype, ndim, shape, LOOM_ROLE_INPUT);
}

loom_value loom_graph_param(loom_graph_t g, const char *name, int ndim, const int64_t *shape) {
    return add_leaf(g, name, LOOM_DTYPE_F32, ndim, shape, LOOM_ROLE_PARAM);
}

loom_value loom_graph_state(loom_graph_t g, const char *name, int ndim, const int64_t *shape) {
    return add_leaf(g, name, LOOM_DTYPE_F32, ndim, shape, LOOM_ROLE_STATE);
}

void loom_graph_mark_output(loom_graph_t g, loom_value v) {
    if (g->status || v == LOOM_NONE) return;
    LOOM_ASSERT(v >= 0 && v < g->n_values);
    g->values[v].is_output = true;
}

// ---- nodes --------------------------------------------------------------------------------------

int loom__graph_push_node(loom_graph *g, const loom_node *n) {
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? g->cap_nodes * 2 : 64;
        loom_node *nodes = loom__realloc(g->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) return loom__graph_fail(g, LOOM_ERR_NOMEM), -1;
        g->nodes = nodes;
        g->cap_nodes = cap;
    }
    g->nodes[g->n_nodes] = *n;
    return g->n_nodes++;
}

int loom__graph_add_node(loom_graph *g, loom_op op, int n_in, const loom_value *in,
                         const int64_t *ai, const float *af, loom_value *out) {
    if (g->status) return -1;
    const loom_op_def *def = loom__op_def(op);
    LOOM_ASSERT(n_in <= LOOM_MAX_IO && (int)strlen(def->in_types) == n_in);
    if (g->has_backward) {
        loom__error(LOOM_ERR_INVALID, "%s: cannot add forward ops after loom_graph_backward()",
                    def->signature);
        return loom__graph_fail(g, LOOM_ERR_INVALID), -1;
    }
    int in_ndim[LOOM_MAX_IO];
    int64_t in_shapes[LOOM_MAX_IO][LOOM_MAX_DIMS];
    for (int i = 0; i < n_in; i++) {
        if (in[i] < 0 || in[i] >= g->n_values) {
            loom__error(LOOM_ERR_INVALID, "%s in module '%s': input %d is not a value of this "
                        "graph", def->signature, g->scope, i);
            return loom__graph_fail(g, LOOM_ERR_INVALID), -1;
        }
        const loom_value_info *vi = &g->values[in[i]];
        loom_dtype want = def->in_types[i] == 'i' ? LOOM_DTYPE_I32 : LOOM_DTYPE_F32;
        if (vi->dtype != want) {
            loom__error(LOOM_ERR_INVALID, "%s in module '%s': input %d ('%s') is %s, expected %s",
                        def->signature, g->scope, i, vi->name, loom_dtype_name(vi->dtype),
                        loom_dtype_name(want));
            return loom__graph_fail(g, LOOM_ERR_INVALID), -1;
        }
        in_ndim[i] = vi->ndim;
        memcpy(in_shapes[i], vi->shape, sizeof in_shapes[i]);
    }
    loom_node n;
    memset(&n, 0, sizeof n);
    n.op = op;
    n.fwd = -1;
    n.recompute_group = -1;
    n.stage = g->current_stage;
    n.n_in = n_in;
    memcpy(n.in, in, (size_t)n_in * sizeof(int32_t));
    if (ai) memcpy(n.ai, ai, sizeof n.ai);
    if (af) memcpy(n.af, af, sizeof n.af);
    n.module = g->current_module;
    char sizes[128] = "";
    if (def->sizes) def->sizes(&n, sizes, sizeof sizes);
    int n_out, out_ndim[LOOM_MAX_IO];
    int64_t out_shapes[LOOM_MAX_IO][LOOM_MAX_DIMS];
    loom_status st = loom_annotation_infer(def->annotation, sizes[0] ? sizes : NULL, n_in, in_ndim,
                                           (const int64_t(*)[LOOM_MAX_DIMS])in_shapes, &n_out,
                                           out_ndim, out_shapes);
    if (st == 0 && def->shape) def->shape(&n, in_shapes[0], in_ndim[0], out_shapes[0]);
    if (st < 0) {
        loom__error_prefix("%s in module '%s'", def->signature, g->scope[0] ? g->scope : "(top)");
        return loom__graph_fail(g, st), -1;
    }
    n.n_out = n_out;
    int node = g->n_nodes;
    for (int o = 0; o < n_out; o++) {
        loom_value v = loom__graph_add_value(g, NULL, LOOM_DTYPE_F32, out_ndim[o], out_shapes[o],
                                             LOOM_ROLE_ACTIVATION);
        if (v == LOOM_NONE) return -1;
        g->values[v].producer = node;
        n.out[o] = v;
        if (out) out[o] = v;
    }
    return loom__graph_push_node(g, &n);
}

// ---- inspection ---------------------------------------------------------------------------------

int loom_graph_n_values(loom_graph_t g) { return g->n_values; }
int loom_graph_n_nodes(loom_graph_t g) { return g->n_nodes; }

int loom_value_shape(loom_graph_t g, loom_value v, int64_t shape[LOOM_MAX_DIMS]) {
    if (v < 0 || v >= g->n_values) return 0;
    memcpy(shape, g->values[v].shape, sizeof g->values[v].shape);
    return g->values[v].ndim;
}

static int valid(loom_graph_t g, loom_value v) { return v >= 0 && v < g->n_values; }

int64_t loom_value_numel(loom_graph_t g, loom_value v) {
    return valid(g, v) ? loom__value_numel(g, v) : 0;
}
loom_dtype loom_value_dtype(loom_graph_t g, loom_value v) {
    return valid(g, v) ? g->values[v].dtype : LOOM_DTYPE_COUNT;
}
loom_role loom_value_role(loom_graph_t g, loom_value v) {
    return valid(g, v) ? g->values[v].role : LOOM_ROLE_COUNT;
}
const char *loom_value_name(loom_graph_t g, loom_value v) {
    return valid(g, v) ? g->values[v].name : "";
}

loom_value loom_graph_grad(loom_graph_t g, loom_value v) {
    if (v < 0 || v >= g->n_values) return LOOM_NONE;
    return g->values[v].grad;
}

const char *loom_node_signature(loom_graph_t g, int node) {
    return loom__op_def(g->nodes[node].op)->signature;
}
const char *loom_node_annotation(loom_graph_t g, int node) {
    return loom__op_def(g->nodes[node].op)->annotation;
}
const char *loom_node_module(loom_graph_t g, int node) {
    return g->modules[g->nodes[node].module];
}
int loom_node_is_backward(loom_graph_t g, int node) { return g->nodes[node].backward; }

double loom__op_flops(const loom_graph *g, const loom_node *fwd, bool backward) {
    const loom_op_def *def = loom__op_def(fwd->op);
    if (def->flops) return def->flops(g, fwd, backward);
    double elems = (double)loom__value_numel(g, fwd->out[0]);
    return backward ? 2 * elems : elems;
}

double loom_node_flops(loom_graph_t g, int node) {
    const loom_node *n = &g->nodes[node];
    return loom__op_flops(g, n->backward ? &g->nodes[n->fwd] : n, n->backward);
}
