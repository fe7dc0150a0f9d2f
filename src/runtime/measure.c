// Measured op costs: each distinct forward node runs alone, as a one-node graph with its
// backward, on the real backend, and its best time is its cost. Measurements are cached on disk
// ($XDG_CACHE_HOME/loom/ops/cpu.json), keyed by op signature, input shapes, dtypes and roles,
// attributes and threads, so a signature is profiled once per machine.

#include "runtime/runner.h"

#include "core/core.h"
#include "io/fileio.h"
#include "loom/device.h"

#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

enum { MEASURE_RUNS = 3 };

// Whether nodes a and b compute the same thing on the same shapes (so cost the same).
static int same_signature(const loom_graph *g, const loom_node *a, const loom_node *b) {
    if (a->op != b->op || a->n_in != b->n_in || memcmp(a->ai, b->ai, sizeof a->ai) != 0 ||
        memcmp(a->af, b->af, sizeof a->af) != 0)
        return 0;
    for (int k = 0; k < a->n_in; k++) {
        const loom_value_info *x = &g->values[a->in[k]], *y = &g->values[b->in[k]];
        if (x->dtype != y->dtype || x->ndim != y->ndim || x->role != y->role ||
            memcmp(x->shape, y->shape, (size_t)x->ndim * sizeof x->shape[0]) != 0)
            return 0;
    }
    return 1;
}

// The best forward and backward times of node n of g, run alone (the run with the best sum).
static loom_status measure_node(const loom_graph *g, const loom_node *n, double *fwd_s,
                                double *bwd_s) {
    *fwd_s = *bwd_s = 0;
    loom_graph_t mg = NULL;
    LOOM_CHECK(loom_graph_create(&mg));
    loom_value in[LOOM_MAX_IO], out[LOOM_MAX_IO];
    const loom_op_def *def = loom__op_def(n->op);
    int wants_grad = 0;
    for (int k = 0; k < n->n_in; k++) {
        const loom_value_info *vi = &g->values[n->in[k]];
        char name[32];
        snprintf(name, sizeof name, "x%d", k);
        if (vi->role == LOOM_ROLE_PARAM) {
            in[k] = loom_graph_param(mg, name, vi->ndim, vi->shape);
        } else {
            in[k] = loom_graph_input(mg, name, vi->dtype, vi->ndim, vi->shape);
            // Activations come from earlier ops: their gradients are part of the cost.
            if (in[k] >= 0 && vi->role == LOOM_ROLE_ACTIVATION && vi->dtype == LOOM_DTYPE_F32)
                mg->values[in[k]].requires_grad = true;
        }
        if (in[k] >= 0 && (def->grad_inputs >> k & 1) &&
            (vi->role == LOOM_ROLE_PARAM || mg->values[in[k]].requires_grad))
            wants_grad = 1;
    }
    loom_status st = loom_graph_status(mg);
    if (st == 0 && loom__graph_add_node(mg, n->op, n->n_in, in, n->ai, n->af, out) < 0)
        st = loom_graph_status(mg);
    int train = st == 0 && wants_grad && !(def->flags & LOOM_OPF_NO_BACKWARD);
    if (train) {
        loom_value seeds[LOOM_MAX_IO];
        int n_seeds = 0;
        for (int o = 0; o < n->n_out; o++)
            if (mg->values[out[o]].dtype == LOOM_DTYPE_F32) seeds[n_seeds++] = out[o];
        st = loom__graph_backward_seeded(mg, -1, n_seeds, seeds);
    }
    loom_program *prog = NULL;
    loom_runner *r = NULL;
    float *params = NULL;
    if (st == 0) {
        loom_lower_options lo = {.train = train, .micro_batches = 1, .seed = 1.0f};
        st = loom__lower(mg, &lo, &prog);
    }
    if (st == 0) {
        size_t bytes = prog->region_bytes[LOOM_REGION_PARAM];
        params = loom__malloc_aligned(bytes ? bytes : 64);
        if (!params) st = LOOM_ERR_NOMEM;
        else memset(params, 0, bytes ? bytes : 64);  // ids 0 are valid, zeros time like any data
    }
    if (st == 0) st = loom__runner_create(prog, loom__backend_cpu(), params, &r);
    else loom__program_free(prog);
    if (st == 0) {
        r->skip_update = 1;
        r->trace = 1;
        double best = -1;
        for (int run = 0; run <= MEASURE_RUNS && st == 0; run++) {  // run 0 warms up
            r->n_events = 0;
            st = loom__runner_run(r);
            double t[2] = {0, 0};
            for (int e = 0; e < r->n_events; e++) {
                loom_instr_kind kind = prog->instr[r->events[e].instr].kind;
                if (kind == LOOM_INSTR_FORWARD || kind == LOOM_INSTR_BACKWARD)
                    t[kind == LOOM_INSTR_BACKWARD] += r->events[e].end - r->events[e].start;
            }
            if (run > 0 && (best < 0 || t[0] + t[1] < best)) {
                best = t[0] + t[1];
                *fwd_s = t[0], *bwd_s = t[1];
            }
        }
    }
    loom__runner_free(r);
    loom__free_aligned(params);
    loom_graph_destroy(mg);
    return st;
}

// The cache key of node n: "loom.linear f32:param:768x768 f32:act:4x64x768 | ai ... | t2".
static void cache_key(const loom_graph *g, const loom_node *n, int threads, char *buf,
                      size_t cap) {
    static const char *roles[] = {"in", "param", "act", "grad", "state"};
    size_t len = (size_t)snprintf(buf, cap, "%s", loom__op_def(n->op)->signature);
    for (int k = 0; k < n->n_in && len < cap; k++) {
        const loom_value_info *v = &g->values[n->in[k]];
        len += (size_t)snprintf(buf + len, cap - len, " %s:%s:", loom_dtype_name(v->dtype),
                                (unsigned)v->role < 5 ? roles[v->role] : "?");
        for (int d = 0; d < v->ndim && len < cap; d++)
            len += (size_t)snprintf(buf + len, cap - len, "%s%lld", d ? "x" : "",
                                    (long long)v->shape[d]);
    }
    if (len < cap)
        snprintf(buf + len, cap - len, " | %lld %lld %lld %lld %.9g %.9g %.9g %.9g | t%d",
                 (long long)n->ai[0], (long long)n->ai[1], (long long)n->ai[2],
                 (long long)n->ai[3], (double)n->af[0], (double)n->af[1], (double)n->af[2],
                 (double)n->af[3], threads);
}

// The cache file's measurements (an object: key -> [forward s, backward s]), or an empty object when there is
// none or it cannot be read (a damaged cache is measured again, not an error).
static json_t *cache_load(const char *path) {
    json_t *root = path[0] ? json_load_file(path, 0, NULL) : NULL;
    json_t *ops = root ? json_object_get(root, "ops") : NULL;
    json_t *version = root ? json_object_get(root, "version") : NULL;
    if (!json_is_object(ops) || json_integer_value(version) != 2) {
        json_decref(root);
        return json_pack("{s:i, s:{}}", "version", 2, "ops");
    }
    return root;
}

loom_status loom__measure_op_times(const loom_graph *g, int threads, double *fwd_s,
                                  double *bwd_s) {
    int saved = omp_get_max_threads();
    if (threads < 1) threads = saved;
    omp_set_num_threads(threads);
    char path[4096] = "", key[1024];
    // Same directory as the device specs: <cache>/loom/ops/cpu.json.
    if (loom_device_spec_cache_path("cpu", path, sizeof path) == 0) {
        char *dir = strstr(path, "/devices/cpu.json");
        if (dir) snprintf(dir, sizeof path - (size_t)(dir - path), "/ops/cpu.json");
        else path[0] = '\0';
    }
    json_t *cache = cache_load(path);
    json_t *ops = cache ? json_object_get(cache, "ops") : NULL;
    int added = 0;
    loom_status st = cache ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int i = 0; i < g->n_nodes && st == 0; i++) {
        const loom_node *n = &g->nodes[i];
        fwd_s[i] = bwd_s[i] = 0;
        if (n->backward || (loom__op_def(n->op)->flags & LOOM_OPF_COMM)) continue;
        int j = 0;
        while (j < i && (g->nodes[j].backward || !same_signature(g, &g->nodes[j], n))) j++;
        if (j < i) {
            fwd_s[i] = fwd_s[j], bwd_s[i] = bwd_s[j];
            continue;
        }
        cache_key(g, n, threads, key, sizeof key);
        json_t *hit = json_object_get(ops, key);
        double f = json_number_value(json_array_get(hit, 0));
        double b = json_number_value(json_array_get(hit, 1));
        if (json_array_size(hit) == 2 && f >= 0 && b >= 0) {
            fwd_s[i] = f, bwd_s[i] = b;
            continue;
        }
        st = measure_node(g, n, &fwd_s[i], &bwd_s[i]);
        if (st == 0)
            json_object_set_new(ops, key, json_pack("[f, f]", fwd_s[i], bwd_s[i])), added = 1;
    }
    omp_set_num_threads(saved);
    if (st == 0 && added && path[0]) {
        // A cache that cannot be written only costs a new measurement next time.
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        if (loom__mkdirs(dir) != 0 || loom__write_json_atomic(path, cache, JSON_INDENT(1)) != 0)
            loom__log(LOOM_LOG_WARN, "could not cache op measurements in %s", path);
    }
    json_decref(cache);
    if (st < 0) loom__error_prefix("measuring op costs");
    return st;
}

loom_status loom__measure_costs(const loom_graph *g, int threads, double *cost) {
    double *bwd = loom__malloc((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof(double));
    if (!bwd) return LOOM_ERR_NOMEM;
    loom_status st = loom__measure_op_times(g, threads, cost, bwd);
    for (int i = 0; st == 0 && i < g->n_nodes; i++) cost[i] += bwd[i];
    loom__free(bwd);
    return st;
}
