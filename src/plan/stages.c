// Pipeline stages: cut a graph's forward nodes into contiguous stages, by per-stage layer counts
// (pipeline_layers) or at module starts (pipeline_pivots, else every layer boundary) chosen to
// balance the stages' forward+backward FLOPs.

#include "plan/stages.h"

#include "core/core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PATH_CAP 1024
// Stage costs are balanced in integers (a fixed fraction of the total) so that every MPI rank,
// computing the split on its own, compares exactly the same numbers.
#define COST_SCALE ((double)(1 << 30))
#define NO_COST INT64_MAX

// The forward nodes as pipeline units: [pre][layer 0]...[layer L-1][post]. Positions are
// indices into `node` (the ordinary forward nodes in graph order).
typedef struct units {
    int n;                // ordinary forward nodes
    int32_t *node;        // their graph indices
    int n_layers;
    int32_t *start;       // position of each layer's first node; start[n_layers] = post start
    char **names;         // each layer's module prefix ("h.3"), for messages
} units;

static void units_free(units *u) {
    for (int l = 0; l < u->n_layers; l++) loom__free(u->names[l]);
    loom__free(u->node), loom__free(u->start), loom__free(u->names);
}

// Recompute clones are forward ops too, but they run during the backward next to the backward
// nodes that read them, so like those they belong to no forward stage.
static int is_forward(const loom_node *n) { return !n->backward && n->recompute_group < 0; }

static const char *node_path(const loom_graph *g, int32_t node) {
    return g->modules[g->nodes[node].module];
}

// Split the forward nodes into pre, layers and post. A layer is a numbered module prefix (the
// one recompute's "layers" names); its nodes must be contiguous, since a stage holds whole
// layers. Nodes outside any layer between two layers stay with the layer before them.
static loom_status units_find(const loom_graph *g, units *u) {
    memset(u, 0, sizeof *u);
    u->node = loom__malloc((size_t)(g->n_nodes + 1) * sizeof(int32_t));
    u->start = loom__malloc((size_t)(g->n_nodes + 1) * sizeof(int32_t));
    u->names = loom__calloc((size_t)g->n_nodes + 1, sizeof(char *));
    if (!u->node || !u->start || !u->names) return LOOM_ERR_NOMEM;
    char prefix[PATH_CAP];
    int end = 0;  // position after the last node of the current (last) layer
    for (int i = 0; i < g->n_nodes; i++) {
        if (!is_forward(&g->nodes[i])) continue;
        int p = u->n++;
        u->node[p] = i;
        if (!loom__module_prefix(node_path(g, i), "layers", prefix, sizeof prefix)) continue;
        int L = u->n_layers;
        if (L > 0 && !strcmp(prefix, u->names[L - 1])) {
            if (end != p)
                return loom__error(LOOM_ERR_INVALID, "pipeline stages: layer '%s' is not "
                                   "contiguous: node %d of module '%s' lies inside it; pipeline "
                                   "stages hold whole layers", prefix, u->node[end],
                                   node_path(g, u->node[end]));
            end = p + 1;
            continue;
        }
        for (int l = 0; l < L; l++)
            if (!strcmp(prefix, u->names[l]))
                return loom__error(LOOM_ERR_INVALID, "pipeline stages: layer '%s' is not "
                                   "contiguous: its node %d (module '%s') comes after layer '%s'; "
                                   "pipeline stages hold whole layers", prefix, i,
                                   node_path(g, i), u->names[L - 1]);
        if (!(u->names[L] = loom__strdup(prefix))) return LOOM_ERR_NOMEM;
        u->start[L] = p;
        u->n_layers = L + 1;
        end = p + 1;
    }
    // Without numbered layers every node is "pre": nothing lies after the last layer.
    u->start[u->n_layers] = u->n_layers ? end : u->n;
    return LOOM_OK;
}

// ---- pipeline_layers ----------------------------------------------------------------------------

// Layers per stage from "l0,l1,...": -1 entries share what the others leave, the earlier ones
// taking the remainder.
static loom_status parse_layers(const char *spec, int nstages, int L, int *count) {
    int n = 0, shared = 0;
    long long fixed = 0;
    const char *p = spec;
    for (;;) {
        size_t len = strcspn(p, ",");
        char *endp;
        long v = strtol(p, &endp, 10);
        const char *q = endp;
        while (q < p + len && (*q == ' ' || *q == '\t')) q++;
        if (endp == p || q != p + len || v < -1 || v > (1L << 24))
            return loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s': entry %d ('%.*s') is "
                               "not a layer count (an integer >= 0, or -1 to share the rest); "
                               "the model has %d layers", spec, n + 1, (int)len, p, L);
        if (n < nstages) count[n] = (int)v;
        n++;
        if (v < 0) shared++;
        else fixed += v;
        if (!p[len]) break;
        p += len + 1;
    }
    if (n != nstages)
        return loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s' has %d entries but there are "
                           "%d stages (pipeline ranks x chunks), one entry each; the model has %d "
                           "layers", spec, n, nstages, L);
    if (fixed > L)
        return loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s' asks for %lld layers but the "
                           "model has %d layers", spec, fixed, L);
    if (!shared && fixed != L)
        return loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s' adds up to %lld layers but the "
                           "model has %d layers (a -1 entry takes the rest)", spec, fixed, L);
    int rest = L - (int)fixed, k = 0;
    for (int s = 0; s < nstages; s++)
        if (count[s] < 0) {
            count[s] = rest / shared + (k < rest % shared);
            k++;
        }
    return LOOM_OK;
}

// ---- balancing ----------------------------------------------------------------------------------

// Forward FLOPs plus the op table's backward estimate (as loom_node_flops counts a backward
// node: twice the output elements where the op has no formula).
static double flop_cost(const loom_graph *g, int32_t i) {
    return loom__op_flops(g, &g->nodes[i], false) + loom__op_flops(g, &g->nodes[i], true);
}

// Fewest stages covering the positions from `pos[0]` = 0 on with each at most `cap` (pos: 0 and
// the K candidate cuts, increasing; q: scaled cost prefix sums over n positions).
static int min_stages(const int64_t *q, int n, const int32_t *pos, int M, int64_t cap) {
    int stages = 0, cur = 0, k = 0;
    for (;;) {
        stages++;
        if (q[n] - q[pos[cur]] <= cap) return stages;
        if (k < cur + 1) k = cur + 1;
        while (k < M && q[pos[k]] - q[pos[cur]] <= cap) k++;
        if (k == cur + 1) return 1 << 30;  // the next candidate alone is too much
        cur = k - 1;
    }
}

// Choose nstages-1 of the candidate cuts: first the smallest possible maximum stage cost, then
// among those the smallest sum of squared stage costs (so the stages that are not the
// bottleneck are balanced too, instead of one of them taking all the slack), then the earliest
// cuts. cuts[1..nstages-1] receive positions.
static loom_status balance(const loom_graph *g, const units *u, const int32_t *cand, int K,
                           int nstages, const double *cost, int32_t *cuts) {
    const int n = u->n, M = K + 1, S = nstages;
    double *prefix = loom__malloc((size_t)(n + 1) * sizeof(double));
    int64_t *q = loom__malloc((size_t)(n + 1) * sizeof(int64_t));
    int32_t *pos = loom__malloc((size_t)M * sizeof(int32_t));
    int64_t *best = loom__malloc((size_t)S * (size_t)M * sizeof(int64_t));
    loom_status st = LOOM_OK;
    if (!prefix || !q || !pos || !best) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    prefix[0] = 0;
    for (int p = 0; p < n; p++)
        prefix[p + 1] = prefix[p] + (cost ? cost[u->node[p]] : flop_cost(g, u->node[p]));
    // A graph of zero-cost ops (hand-built) still gets balanced, by node count.
    int by_count = !(prefix[n] > 0);
    for (int p = 0; p <= n; p++)
        q[p] = by_count ? p : (int64_t)llround(prefix[p] / prefix[n] * COST_SCALE);
    pos[0] = 0;
    memcpy(pos + 1, cand, (size_t)K * sizeof(int32_t));

    // The bottleneck: the smallest cap that min_stages fits in S stages. Fewer stages are as
    // good, since splitting a stage at an unused candidate never raises the maximum.
    int64_t lo = 0, hi = q[n];
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (min_stages(q, n, pos, M, mid) <= S) hi = mid;
        else lo = mid + 1;
    }
    const int64_t cap = lo;
    // best[r-1][j]: the least sum of squares covering pos[j].. end with r stages, each <= cap,
    // the first starting at pos[j]. Squares stay below 2^60 (costs sum to 2^30).
#define BEST(r, j) best[(size_t)((r) - 1) * (size_t)M + (size_t)(j)]
    for (int j = 0; j < M; j++) {
        int64_t c = q[n] - q[pos[j]];
        BEST(1, j) = c <= cap ? c * c : NO_COST;
    }
    for (int r = 2; r <= S; r++)
        for (int j = 0; j < M; j++) {
            int64_t b = NO_COST;
            for (int k = j + 1; k < M; k++) {
                int64_t c = q[pos[k]] - q[pos[j]];
                if (c > cap) break;
                if (BEST(r - 1, k) != NO_COST && c * c + BEST(r - 1, k) < b)
                    b = c * c + BEST(r - 1, k);
            }
            BEST(r, j) = b;
        }
    LOOM_ASSERT(BEST(S, 0) != NO_COST);
    // Walk forward taking the earliest cut that keeps the optimum.
    for (int r = S, j = 0; r >= 2; r--) {
        int k = j + 1;
        for (;; k++) {
            LOOM_ASSERT(k < M);
            int64_t c = q[pos[k]] - q[pos[j]];
            if (BEST(r - 1, k) != NO_COST && c * c + BEST(r - 1, k) == BEST(r, j)) break;
        }
        cuts[S - r + 1] = pos[k];
        j = k;
    }
#undef BEST
done:
    loom__free(prefix), loom__free(q), loom__free(pos), loom__free(best);
    return st;
}

// ---- candidates ---------------------------------------------------------------------------------

// The first node of every distinct module instance a pivot names. With numbered layers a cut
// lies between the first layer's start and the post start, keeping the embeddings on the first
// stage and the head and loss on the last. cand receives at most u->n positions.
static loom_status pivot_candidates(const loom_graph *g, const units *u, const char *spec,
                                    int32_t *cand, int *K) {
    int lo = u->n_layers ? u->start[0] : 1, hi = u->n_layers ? u->start[u->n_layers] : u->n - 1;
    if (lo < 1) lo = 1;
    char pattern[PATH_CAP], prefix[PATH_CAP], prev[PATH_CAP];
    char *is_cut = loom__calloc((size_t)u->n + 1, 1);
    char **seen = loom__calloc((size_t)u->n + 1, sizeof(char *));
    int n_seen = 0;
    loom_status st = is_cut && seen ? LOOM_OK : LOOM_ERR_NOMEM;
    for (const char *p = spec; *p && st == LOOM_OK;) {
        size_t len = strcspn(p, ",");
        snprintf(pattern, sizeof pattern, "%.*s", (int)len, p);
        p += len + (p[len] == ',');
        if (!pattern[0]) continue;
        int matched = 0;
        prev[0] = '\0';
        for (int q = 0; q < u->n && st == LOOM_OK; q++) {
            if (!loom__module_prefix(node_path(g, u->node[q]), pattern, prefix, sizeof prefix)) {
                prev[0] = '\0';
                continue;
            }
            matched = 1;
            if (!strcmp(prefix, prev)) continue;
            snprintf(prev, sizeof prev, "%s", prefix);
            // An instance that comes back after other nodes begins only once.
            int again = 0;
            for (int s = 0; s < n_seen && !again; s++) again = !strcmp(seen[s], prefix);
            if (again) continue;
            if (!(seen[n_seen++] = loom__strdup(prefix))) st = LOOM_ERR_NOMEM;
            if (q >= lo && q <= hi) is_cut[q] = 1;
        }
        for (int s = 0; s < n_seen; s++) loom__free(seen[s]);
        n_seen = 0;
        if (st == LOOM_OK && !matched)
            st = loom__error(LOOM_ERR_INVALID, "pipeline_pivots '%s': '%s' names no module of "
                             "this model (module names match path suffixes on dots, e.g. 'h.4' "
                             "or 'attn'; 'layers' means every numbered layer)", spec, pattern);
    }
    *K = 0;
    for (int q = 0; st == LOOM_OK && q < u->n; q++)
        if (is_cut[q]) cand[(*K)++] = q;
    for (int s = 0; s < n_seen; s++) loom__free(seen[s]);
    loom__free(seen), loom__free(is_cut);
    return st;
}

// ---- entry --------------------------------------------------------------------------------------

static int is_set(const char *s) { return s && *s; }

loom_status loom__stages_assign(const loom_graph *g, const loom_stage_options *o,
                                int32_t *stage_of) {
    const int S = o->nstages;
    if (S < 1)
        return loom__error(LOOM_ERR_INVALID, "pipeline stages: %d stages asked; there must be "
                           "at least 1 (pipeline_nstages x pipeline_nchunks)", S);
    if (is_set(o->layers) && is_set(o->pivots))
        return loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s' and pipeline_pivots '%s' are "
                           "both set; set one (layers fixes the split, pivots lets it balance)",
                           o->layers, o->pivots);
    for (int i = 0; i < g->n_nodes; i++) stage_of[i] = -1;
    units u;
    int32_t *cuts = loom__malloc((size_t)(S + 1) * sizeof(int32_t));
    int32_t *cand = NULL;
    int *count = NULL;
    loom_status st = units_find(g, &u);
    if (st < 0 || !cuts) {
        st = st < 0 ? st : LOOM_ERR_NOMEM;
        goto done;
    }
    const int L = u.n_layers;
    if (u.n == 0) {
        st = loom__error(LOOM_ERR_INVALID, "pipeline stages: the graph has no forward nodes");
        goto done;
    }
    cuts[0] = 0;
    cuts[S] = u.n;
    if (is_set(o->layers)) {
        if (!(count = loom__malloc((size_t)S * sizeof(int)))) {
            st = LOOM_ERR_NOMEM;
            goto done;
        }
        LOOM_CHECK_GOTO(parse_layers(o->layers, S, L, count), st, done);
        for (int s = 1, sum = 0; s < S; s++) {
            sum += count[s - 1];
            cuts[s] = u.start[sum];
        }
        for (int s = 0; s < S; s++)
            if (cuts[s] == cuts[s + 1]) {
                st = loom__error(LOOM_ERR_INVALID, "pipeline_layers '%s' leaves stage %d with no "
                                 "nodes (the model has %d layers; a 0 fits only the first stage, "
                                 "which holds the embeddings, or the last, which holds the head "
                                 "and loss)", o->layers, s, L);
                goto done;
            }
    } else if (S > 1 || is_set(o->pivots)) {
        // With one stage the pivots are still checked: a misspelt module should not pass
        // silently until someone asks for more stages.
        int K = 0;
        if (!(cand = loom__malloc((size_t)(u.n + L + 1) * sizeof(int32_t)))) {
            st = LOOM_ERR_NOMEM;
            goto done;
        }
        if (is_set(o->pivots)) {
            LOOM_CHECK_GOTO(pivot_candidates(g, &u, o->pivots, cand, &K), st, done);
            if (K < S - 1) {
                st = loom__error(LOOM_ERR_INVALID, "pipeline_pivots '%s' gives %d cut point%s "
                                 "(module starts from the first layer up to the head) but %d "
                                 "stages need %d; name more modules (e.g. 'layers') or use fewer "
                                 "stages", o->pivots, K, K == 1 ? "" : "s", S, S - 1);
                goto done;
            }
        } else {
            // Every layer boundary, and the starts of the first layer and of the post nodes
            // (a stage of only the embeddings or only the head may balance best).
            for (int l = 0; l <= L; l++)  // increasing already
                if (u.start[l] > 0 && u.start[l] < u.n) cand[K++] = u.start[l];
            if (K < S - 1) {
                st = loom__error(LOOM_ERR_INVALID, "pipeline stages: %d stages need %d cut "
                                 "points but the model's %d layers give %d (layer boundaries); "
                                 "use fewer stages (pipeline ranks x chunks) or name "
                                 "pipeline_pivots", S, S - 1, L, K);
                goto done;
            }
        }
        if (S > 1) LOOM_CHECK_GOTO(balance(g, &u, cand, K, S, o->cost, cuts), st, done);
    }
    for (int s = 0; s < S; s++)
        for (int p = cuts[s]; p < cuts[s + 1]; p++) stage_of[u.node[p]] = s;
done:
    units_free(&u);
    loom__free(cuts), loom__free(cand), loom__free(count);
    return st;
}
