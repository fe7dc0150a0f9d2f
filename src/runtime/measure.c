// Measured op costs: each distinct forward node runs as a one-node graph with its backward on
// the real backend (alone, or as several copies at once like ranks sharing the machine), and
// its typical time (the median of a round's runs, the least over rounds) is its cost.
// Measurements are cached on disk
// ($XDG_CACHE_HOME/loom/ops/cpu.json), keyed by op signature, input shapes, dtypes and roles,
// attributes and threads. An entry is refined by the next processes that use it (one more
// round each, until REFINE_SESSIONS sessions measured it; the least time kept), so a measurement
// spoiled by a burst of other work on the machine does not stay for good.

#include "runtime/runner.h"

#include "core/core.h"
#include "io/fileio.h"
#include "loom/device.h"

#include <jansson.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MEASURE_RUNS = 3, MEASURE_ROUNDS = 3, REFINE_SESSIONS = 2 };
// 3: an op's time is its median run (2 kept the best run; such files are measured again).
enum { CACHE_VERSION = 3 };

// This process's stamp on the entries it measures: one refinement per entry per process.
static json_int_t session;
static pthread_once_t session_once = PTHREAD_ONCE_INIT;

static void session_init(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    session = ((json_int_t)t.tv_sec * 1000003 + (json_int_t)t.tv_nsec / 1000) ^
              ((json_int_t)getpid() << 20);
    if (session < 0) session = -session;
}

static json_int_t session_id(void) {
    pthread_once(&session_once, session_init);
    return session;
}

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

// A barrier that can be called off (a copy's thread that failed to start never arrives).
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int count, waiting, generation, cancelled;
} gate;

static void gate_wait(gate *g) {
    pthread_mutex_lock(&g->mu);
    if (!g->cancelled && ++g->waiting == g->count) {
        g->waiting = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else {
        for (int gen = g->generation; gen == g->generation && !g->cancelled;)
            pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

static void gate_cancel(gate *g) {
    pthread_mutex_lock(&g->mu);
    g->cancelled = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

// One copy of a one-node program (its runner owns it) and what its runs took.
typedef struct op_copy {
    loom_runner *r;
    float *params;
    loom_comm_t solo;            // a one-rank communicator (vocabulary-parallel ops use one)
    int threads;
    gate *start;                 // the copies start each run together (NULL: one copy)
    double t[MEASURE_RUNS + 1][2];  // forward, backward seconds of each run (run 0 warms up)
    loom_status st;
} op_copy;

static void *run_copy(void *arg) {
    op_copy *c = arg;
    if (c->start) omp_set_num_threads(c->threads);  // a thread of its own
    for (int run = 0; run <= MEASURE_RUNS; run++) {
        if (c->start) gate_wait(c->start);
        c->r->n_events = 0;
        if (c->st == 0) c->st = loom__runner_run(c->r);
        c->t[run][0] = c->t[run][1] = 0;
        for (int e = 0; e < c->r->n_events; e++) {
            loom_instr_kind kind = c->r->prog->instr[c->r->events[e].instr].kind;
            if (kind == LOOM_INSTR_FORWARD || kind == LOOM_INSTR_BACKWARD)
                c->t[run][kind == LOOM_INSTR_BACKWARD] +=
                    c->r->events[e].end - c->r->events[e].start;
        }
    }
    return NULL;
}

static loom_status copy_create(const loom_graph *mg, int train, int threads, op_copy *c) {
    memset(c, 0, sizeof *c);
    c->threads = threads;
    loom_program *prog = NULL;
    loom_lower_options lo = {.train = train, .micro_batches = 1, .seed = 1.0f};
    LOOM_CHECK(loom__lower(mg, &lo, &prog));
    size_t bytes = prog->region_bytes[LOOM_REGION_PARAM];
    c->params = loom__malloc_aligned(bytes ? bytes : 64);
    if (!c->params) return loom__program_free(prog), LOOM_ERR_NOMEM;
    memset(c->params, 0, bytes ? bytes : 64);  // ids 0 are valid, zeros time like any data
    loom_status st = loom__runner_create(prog, loom__backend_cpu(), c->params, &c->r);
    if (st < 0) return loom__program_free(prog), st;
    loom_comm_config cc = loom_comm_config_default();
    LOOM_CHECK(loom_comm_local_create_all(1, &cc, &c->solo));
    c->r->skip_update = 1;
    c->r->trace = 1;
    c->r->kernel.comm = c->solo;
    return LOOM_OK;
}

static void copy_free(op_copy *c) {
    loom__runner_free(c->r);
    loom__free_aligned(c->params);
    if (c->solo) loom_comm_destroy(c->solo);
}

// The one-node graph of node n of g with its backward (when it has one): *train says which.
static loom_status node_graph(const loom_graph *g, const loom_node *n, loom_graph_t *out,
                              int *train) {
    loom_graph_t mg = NULL;
    LOOM_CHECK(loom_graph_create(&mg));
    *out = mg;
    loom_value in[LOOM_MAX_IO], outs[LOOM_MAX_IO];
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
    if (st == 0 && loom__graph_add_node(mg, n->op, n->n_in, in, n->ai, n->af, outs) < 0)
        st = loom_graph_status(mg);
    *train = st == 0 && wants_grad && !(def->flags & LOOM_OPF_NO_BACKWARD);
    if (*train) {
        loom_value seeds[LOOM_MAX_IO];
        int n_seeds = 0;
        for (int o = 0; o < n->n_out; o++)
            if (mg->values[outs[o]].dtype == LOOM_DTYPE_F32) seeds[n_seeds++] = outs[o];
        st = loom__graph_backward_seeded(mg, -1, n_seeds, seeds);
    }
    return st;
}

// The typical forward and backward times of node n of g (the run with the median sum: a step
// runs each op once, at its typical speed, not its best), with `concurrent` copies running at
// once on their own threads, as the ranks sharing this machine's cores and memory do; the
// copies' mean.
static loom_status measure_node(const loom_graph *g, const loom_node *n, int threads,
                                int concurrent, double *fwd_s, double *bwd_s) {
    *fwd_s = *bwd_s = 0;
    loom_graph_t mg = NULL;
    int train = 0;
    loom_status st = node_graph(g, n, &mg, &train);
    op_copy *copies = loom__calloc((size_t)concurrent, sizeof *copies);
    pthread_t *tids = loom__calloc((size_t)concurrent, sizeof *tids);
    if (st == 0 && (!copies || !tids)) st = LOOM_ERR_NOMEM;
    for (int c = 0; st == 0 && c < concurrent; c++)
        st = copy_create(mg, train, threads, &copies[c]);
    gate start = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, concurrent, 0, 0, 0};
    int started = 0;
    if (st == 0 && concurrent == 1) {
        run_copy(&copies[0]);  // on this thread and its OpenMP team
        started = 1;
    } else if (st == 0) {
        for (int c = 0; c < concurrent; c++) copies[c].start = &start;
        for (; started < concurrent; started++)
            if (pthread_create(&tids[started], NULL, run_copy, &copies[started]) != 0) break;
        if (started < concurrent) gate_cancel(&start);
        for (int c = 0; c < started; c++) pthread_join(tids[c], NULL);
        if (started < concurrent)
            st = loom__error(LOOM_ERR_INTERNAL, "measuring op costs: cannot start a thread");
    }
    double t[MEASURE_RUNS][2];
    int order[MEASURE_RUNS];
    for (int c = 0; st == 0 && c < concurrent; c++) st = copies[c].st;
    for (int run = 1; st == 0 && run <= MEASURE_RUNS; run++) {  // run 0 warmed up
        double *r = t[run - 1];
        r[0] = r[1] = 0;
        for (int c = 0; c < concurrent; c++)
            r[0] += copies[c].t[run][0] / concurrent, r[1] += copies[c].t[run][1] / concurrent;
        // Insertion by total time: order[] ends sorted.
        int at = run - 1;
        for (; at > 0 && t[order[at - 1]][0] + t[order[at - 1]][1] > r[0] + r[1]; at--)
            order[at] = order[at - 1];
        order[at] = run - 1;
    }
    if (st == 0) *fwd_s = t[order[MEASURE_RUNS / 2]][0], *bwd_s = t[order[MEASURE_RUNS / 2]][1];
    for (int c = 0; copies && c < concurrent; c++) copy_free(&copies[c]);
    loom__free(copies), loom__free(tids);
    loom_graph_destroy(mg);
    return st;
}

// The cache key of node n: "loom.linear f32:param:768x768 f32:act:4x64x768 | ai ... | t2".
static void cache_key(const loom_graph *g, const loom_node *n, int threads, int concurrent,
                      char *buf, size_t cap) {
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
        snprintf(buf + len, cap - len, " | %lld %lld %lld %lld %.9g %.9g %.9g %.9g | t%d c%d",
                 (long long)n->ai[0], (long long)n->ai[1], (long long)n->ai[2],
                 (long long)n->ai[3], (double)n->af[0], (double)n->af[1], (double)n->af[2],
                 (double)n->af[3], threads, concurrent);
}

// The cache file's measurements (an object: key -> [forward s, backward s, processes that
// measured it, the last one's session stamp]; the last two absent in older files: one process),
// or an empty object when there is none, it cannot be read or it is of another version
// (measured again, not an error).
static json_t *cache_load(const char *path) {
    json_t *root = path[0] ? json_load_file(path, 0, NULL) : NULL;
    json_t *ops = root ? json_object_get(root, "ops") : NULL;
    json_t *version = root ? json_object_get(root, "version") : NULL;
    if (!json_is_object(ops) || json_integer_value(version) != CACHE_VERSION) {
        json_decref(root);
        return json_pack("{s:i, s:{}}", "version", CACHE_VERSION, "ops");
    }
    return root;
}

// The first forward node before i with node i's signature, or -1.
static int same_as_earlier(const loom_graph *g, int i) {
    for (int j = 0; j < i; j++)
        if (!g->nodes[j].backward && same_signature(g, &g->nodes[j], &g->nodes[i])) return j;
    return -1;
}

loom_status loom__measure_op_times(const loom_graph *g, int threads, int concurrent,
                                  double *fwd_s, double *bwd_s) {
    if (concurrent < 1) concurrent = 1;
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
    // Distinct nodes to measure: 1 the cache lacks them, 2 refine the cache's entry.
    char *need = loom__calloc((size_t)g->n_nodes + 1, 1);
    int *first = loom__malloc(((size_t)g->n_nodes + 1) * sizeof(int));
    json_int_t *sessions_of = loom__calloc((size_t)g->n_nodes + 1, sizeof *sessions_of);
    int n_need = 0;
    loom_status st = cache && need && first && sessions_of ? LOOM_OK : LOOM_ERR_NOMEM;
    for (int i = 0; i < g->n_nodes && st == 0; i++) {
        const loom_node *n = &g->nodes[i];
        fwd_s[i] = bwd_s[i] = 0;
        first[i] = -1;
        if (n->backward || (loom__op_def(n->op)->flags & LOOM_OPF_COMM)) continue;
        if ((first[i] = same_as_earlier(g, i)) >= 0) continue;
        cache_key(g, n, threads, concurrent, key, sizeof key);
        json_t *hit = json_object_get(ops, key);
        double f = json_number_value(json_array_get(hit, 0));
        double b = json_number_value(json_array_get(hit, 1));
        json_int_t sessions = json_array_size(hit) >= 3 ? json_integer_value(json_array_get(hit, 2))
                                                        : 1;
        json_int_t last = json_integer_value(json_array_get(hit, 3));
        if (json_array_size(hit) >= 2 && f >= 0 && b >= 0) {
            fwd_s[i] = f, bwd_s[i] = b;
            // Measured by too few processes yet, none of them this one: one more round.
            if (sessions < REFINE_SESSIONS && last != session_id()) need[i] = 2, n_need++;
            sessions_of[i] = sessions;
        } else {
            need[i] = 1, n_need++;
        }
    }
    // In rounds: an op's best run over rounds spread in time, so a burst of other work on the
    // machine spoils one round of an op rather than all its runs. Ops already cached get one.
    for (int round = 0; round < MEASURE_ROUNDS && st == 0 && n_need; round++)
        for (int i = 0; i < g->n_nodes && st == 0; i++) {
            double f, b;
            if (!need[i] || (need[i] == 2 && round > 0)) continue;
            st = measure_node(g, &g->nodes[i], threads, concurrent, &f, &b);
            if (st == 0 && ((need[i] == 1 && round == 0) || f + b < fwd_s[i] + bwd_s[i]))
                fwd_s[i] = f, bwd_s[i] = b;
        }
    for (int i = 0; i < g->n_nodes && st == 0; i++) {
        if (first[i] >= 0) fwd_s[i] = fwd_s[first[i]], bwd_s[i] = bwd_s[first[i]];
        if (!need[i]) continue;
        cache_key(g, &g->nodes[i], threads, concurrent, key, sizeof key);
        json_object_set_new(ops, key, json_pack("[f, f, I, I]", fwd_s[i], bwd_s[i],
                                                need[i] == 2 ? sessions_of[i] + 1 : 1,
                                                session_id()));
    }
    omp_set_num_threads(saved);
    if (st == 0 && n_need && path[0]) {
        // A cache that cannot be written only costs a new measurement next time.
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        if (loom__mkdirs(dir) != 0 || loom__write_json_atomic(path, cache, JSON_INDENT(1)) != 0)
            loom__log(LOOM_LOG_WARN, "could not cache op measurements in %s", path);
    }
    json_decref(cache);
    loom__free(need), loom__free(first), loom__free(sessions_of);
    if (st < 0) loom__error_prefix("measuring op costs");
    return st;
}

loom_status loom__measure_costs(const loom_graph *g, int threads, double *cost) {
    double *bwd = loom__malloc((size_t)(g->n_nodes ? g->n_nodes : 1) * sizeof(double));
    if (!bwd) return LOOM_ERR_NOMEM;
    loom_status st = loom__measure_op_times(g, threads, 1, cost, bwd);
    for (int i = 0; st == 0 && i < g->n_nodes; i++) cost[i] += bwd[i];
    loom__free(bwd);
    return st;
}
