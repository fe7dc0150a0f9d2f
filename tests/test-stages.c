// Pipeline stage assignment: pipeline_layers splits exactly where the counts say (node ranges
// checked against the module paths), pivots cut at the named modules' starts, balancing picks
// the split a brute-force search proves optimal, and every bad setting is refused with a message
// naming the option.

#include "ir/ir.h"
#include "models/family.h"
#include "plan/stages.h"
#include "testutil.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STAGES 16

static loom_graph_t build(loom_family fam, int n_layer, int vocab, loom_graph_mode mode) {
    loom_model_config c = loom_model_config_default(fam);
    c.n_layer = n_layer;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_kv_head = fam == LOOM_FAMILY_GPT2 ? 4 : 2;
    c.head_dim = 8;
    c.n_inner = 128;
    c.vocab_size = vocab;
    c.max_seq = 64;
    CHECK_OK(loom_model_config_validate(&c));
    loom_graph_t g = NULL;
    CHECK_OK(loom_graph_create(&g));
    CHECK_OK(loom__family(fam)->build(&c, g, mode, 2, 8, 0));
    return g;
}

static int is_fwd(loom_graph_t g, int i) {
    return !g->nodes[i].backward && g->nodes[i].recompute_group < 0;
}

// The layer number in a module path, read independently of the library: its first all-digit
// component ("h.3.attn" -> 3, "model.layers.2.mlp" -> 2), -1 when none.
static int layer_of(loom_graph_t g, int i) {
    const char *p = g->modules[g->nodes[i].module];
    while (*p) {
        size_t len = strcspn(p, ".");
        int digits = len > 0;
        for (size_t k = 0; k < len; k++) digits &= isdigit((unsigned char)p[k]) != 0;
        if (digits) return atoi(p);
        p += len + (p[len] == '.');
    }
    return -1;
}

static loom_status assign(loom_graph_t g, int S, const char *pivots, const char *layers,
                          int32_t *so) {
    loom_stage_options o = {.nstages = S, .pivots = pivots, .layers = layers};
    return loom__stages_assign(g, &o, so);
}

// Every successful split: forward nodes non-decreasing from 0 to S-1 with no stage skipped
// (so none is empty), every other node -1.
static void check_valid(loom_graph_t g, const int32_t *so, int S, const char *what) {
    int prev = 0, seen_first = 0, ok = 1;
    for (int i = 0; i < g->n_nodes; i++) {
        if (!is_fwd(g, i)) {
            ok &= so[i] == -1;
            continue;
        }
        if (!seen_first) ok &= so[i] == 0;
        else ok &= so[i] == prev || so[i] == prev + 1;
        seen_first = 1;
        prev = so[i];
    }
    CHECK_MSG(ok && prev == S - 1, "%s: stages not a contiguous non-empty 0..%d run", what, S - 1);
}

// Layers per stage of a split (pre/post nodes count as no layer).
static void layers_per_stage(loom_graph_t g, const int32_t *so, int S, int *count) {
    int last_layer = -1;
    for (int s = 0; s < S; s++) count[s] = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        int l = is_fwd(g, i) ? layer_of(g, i) : -1;
        if (l >= 0 && l != last_layer) count[so[i]]++, last_layer = l;
    }
}

// The split pipeline_layers `counts` must give: layer l on the stage whose count range holds
// it, nodes before the first layer on stage 0, after the last on stage S-1.
static void check_exact(loom_graph_t g, const int32_t *so, int S, const int *counts,
                        const char *what) {
    int stage_of_layer[64], l = 0, seen_layer = 0, bad = -1;
    for (int s = 0; s < S; s++)
        for (int k = 0; k < counts[s]; k++) stage_of_layer[l++] = s;
    for (int i = 0; i < g->n_nodes && bad < 0; i++) {
        if (!is_fwd(g, i)) continue;
        int layer = layer_of(g, i), want;
        if (layer >= 0) want = stage_of_layer[layer], seen_layer = 1;
        else want = seen_layer ? S - 1 : 0;
        if (so[i] != want) bad = i;
    }
    CHECK_MSG(bad < 0, "%s: node %d (%s in '%s') on stage %d", what, bad,
              bad >= 0 ? loom_node_signature(g, bad) : "", bad >= 0 ? loom_node_module(g, bad) : "",
              bad >= 0 ? so[bad] : -1);
    check_valid(g, so, S, what);
}

static void check_error(loom_graph_t g, int S, const char *pivots, const char *layers,
                        const char *const *needles, const char *what) {
    int32_t *so = malloc((size_t)g->n_nodes * sizeof *so);
    loom_status st = assign(g, S, pivots, layers, so);
    const char *msg = loom_last_error();
    int has_all = 1;
    for (int k = 0; needles[k]; k++) has_all &= strstr(msg, needles[k]) != NULL;
    CHECK_MSG(st == LOOM_ERR_INVALID && has_all, "%s: status %d, message '%s'", what, st, msg);
    free(so);
}
#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

// ---- pipeline_layers ----------------------------------------------------------------------------

static void test_layers(loom_family fam, const char *name, const char *layer0) {
    loom_graph_t g = build(fam, 4, 64, LOOM_GRAPH_TRAIN);
    int32_t *so = malloc((size_t)g->n_nodes * sizeof *so);
    char what[128];
    const struct {
        const char *spec;
        int S, counts[4];
    } cases[] = {
        {"1,1,1,1", 4, {1, 1, 1, 1}},  {"0,-1,-1,0", 4, {0, 2, 2, 0}},
        {"-1,-1,-1", 3, {2, 1, 1}},    {"-1,1,-1", 3, {2, 1, 1}},
        {"3, 1", 2, {3, 1}},            {"4,0", 2, {4, 0}},
        {"0,4", 2, {0, 4}},            {"-1", 1, {4}},
        {"4", 1, {4}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(what, sizeof what, "%s layers '%s'", name, cases[c].spec);
        CHECK_OK(assign(g, cases[c].S, NULL, cases[c].spec, so));
        check_exact(g, so, cases[c].S, cases[c].counts, what);
    }
    // "1,1,1,1" by name: stage 0 is the embeddings and layer 0, stage 3 starts at layer 3's
    // first node and runs to the loss.
    CHECK_OK(assign(g, 4, NULL, "1,1,1,1", so));
    int first[4] = {-1, -1, -1, -1}, last_fwd = -1;
    for (int i = 0; i < g->n_nodes; i++)
        if (is_fwd(g, i)) {
            if (first[so[i]] < 0) first[so[i]] = i;
            last_fwd = i;
        }
    CHECK_MSG(first[0] == 0, "%s: stage 0 starts at node %d", name, first[0]);
    char want[64];
    for (int s = 1; s < 4; s++) {
        snprintf(want, sizeof want, "%s.%d.", layer0, s);
        const char *mod = loom_node_module(g, first[s]);
        CHECK_MSG(!strncmp(mod, want, strlen(want)) && layer_of(g, first[s] - 1) == s - 1,
                  "%s: stage %d starts at node %d of '%s'", name, s, first[s], mod);
    }
    CHECK_MSG(so[last_fwd] == 3 && !strcmp(loom_node_signature(g, last_fwd), "loom.cross_entropy"),
              "%s: the loss is on stage %d", name, so[last_fwd]);
    // "0,-1,-1,0": the first stage holds only embeddings, the last only norm, head and loss.
    CHECK_OK(assign(g, 4, NULL, "0,-1,-1,0", so));
    int pre_only = 1, post_only = 1;
    for (int i = 0; i < g->n_nodes; i++) {
        if (!is_fwd(g, i)) continue;
        if (so[i] == 0) pre_only &= layer_of(g, i) < 0;
        if (so[i] == 3) post_only &= layer_of(g, i) < 0;
    }
    CHECK_MSG(pre_only && post_only, "%s '0,-1,-1,0': end stages hold layer nodes", name);
    free(so);
    loom_graph_destroy(g);
}

static void test_layer_errors(void) {
    loom_graph_t g = build(LOOM_FAMILY_GPT2, 4, 64, LOOM_GRAPH_TRAIN);
    check_error(g, 4, NULL, "1,1,1", NEEDLES("pipeline_layers", "'1,1,1'", "4 stages",
                                             "4 layers"), "too few entries");
    check_error(g, 2, NULL, "1,1,2", NEEDLES("pipeline_layers", "'1,1,2'", "4 layers"),
                "too many entries");
    check_error(g, 4, NULL, "1,1,1,0", NEEDLES("pipeline_layers", "'1,1,1,0'", "3 layers",
                                               "4 layers"), "sum below");
    check_error(g, 4, NULL, "1,2,1,1", NEEDLES("pipeline_layers", "'1,2,1,1'", "4 layers"),
                "sum above");
    check_error(g, 3, NULL, "3,2,-1", NEEDLES("pipeline_layers", "'3,2,-1'", "5 layers",
                                              "4 layers"), "too many with a share");
    check_error(g, 4, NULL, "1,x,1,1", NEEDLES("pipeline_layers", "'1,x,1,1'", "entry 2",
                                               "4 layers"), "syntax");
    check_error(g, 4, NULL, "1,,1,1", NEEDLES("pipeline_layers", "entry 2", "4 layers"),
                "empty entry");
    check_error(g, 2, NULL, "1.5,2.5", NEEDLES("pipeline_layers", "entry 1"), "fraction");
    check_error(g, 2, NULL, "-2,6", NEEDLES("pipeline_layers", "entry 1", "4 layers"),
                "below -1");
    check_error(g, 2, NULL, "2,2,", NEEDLES("pipeline_layers", "entry 3"), "trailing comma");
    check_error(g, 4, NULL, "2,0,2,0", NEEDLES("pipeline_layers", "'2,0,2,0'", "stage 1",
                                               "no nodes", "4 layers"), "empty middle stage");
    check_error(g, 3, NULL, "-1,-1,-1,-1", NEEDLES("pipeline_layers", "4 entries", "3 stages"),
                "entries vs stages");
    // Shares 1,1,1,1,0,0: the last stage keeps the head, the one before it has nothing.
    check_error(g, 6, NULL, "-1,-1,-1,-1,-1,-1", NEEDLES("pipeline_layers", "stage 4",
                                                         "no nodes"), "shares run out");
    check_error(g, 1, NULL, "0", NEEDLES("pipeline_layers", "'0'", "4 layers"), "one stage, 0");
    check_error(g, 2, "layers", "2,2", NEEDLES("pipeline_layers", "pipeline_pivots"), "both");
    check_error(g, 0, NULL, NULL, NEEDLES("stages", "at least 1"), "no stages");
    loom_graph_destroy(g);
}

// ---- pivots -------------------------------------------------------------------------------------

static int first_of_stage(loom_graph_t g, const int32_t *so, int s) {
    for (int i = 0; i < g->n_nodes; i++)
        if (is_fwd(g, i) && so[i] == s) return i;
    return -1;
}

static void test_pivots(void) {
    loom_graph_t g = build(LOOM_FAMILY_GPT2, 4, 64, LOOM_GRAPH_TRAIN);
    int32_t *so = malloc((size_t)g->n_nodes * sizeof *so);
    // One pivot, two stages: the cut is exactly at h.2's first node.
    CHECK_OK(assign(g, 2, "h.2", NULL, so));
    check_valid(g, so, 2, "pivots h.2");
    int f = first_of_stage(g, so, 1);
    CHECK_MSG(f > 0 && !strncmp(loom_node_module(g, f), "h.2.", 4) && layer_of(g, f - 1) == 1,
              "pivots h.2: stage 1 starts at node %d ('%s')", f, loom_node_module(g, f));
    // Two pivots, three stages: both used.
    CHECK_OK(assign(g, 3, "h.1,h.3", NULL, so));
    check_valid(g, so, 3, "pivots h.1,h.3");
    int counts[3];
    layers_per_stage(g, so, 3, counts);
    CHECK_MSG(counts[0] == 1 && counts[1] == 2 && counts[2] == 1, "pivots h.1,h.3: %d,%d,%d",
              counts[0], counts[1], counts[2]);
    // Inside a layer: the cut lies where an attention module starts.
    CHECK_OK(assign(g, 2, "attn", NULL, so));
    check_valid(g, so, 2, "pivots attn");
    f = first_of_stage(g, so, 1);
    const char *mod = loom_node_module(g, f), *prev_mod = loom_node_module(g, f - 1);
    CHECK_MSG(strstr(mod, ".attn") && !strstr(prev_mod, ".attn"),
              "pivots attn: stage 1 starts at '%s' after '%s'", mod, prev_mod);
    // A one-stage run still checks its pivots.
    CHECK_OK(assign(g, 1, "h.0", NULL, so));
    check_valid(g, so, 1, "one stage");
    check_error(g, 1, "decoder", NULL, NEEDLES("pipeline_pivots", "'decoder'", "names no module"),
                "one stage, unknown pivot");
    check_error(g, 2, "h.2,decoder", NULL, NEEDLES("pipeline_pivots", "'decoder'"),
                "unknown pivot");
    check_error(g, 3, "h.2", NULL, NEEDLES("pipeline_pivots", "'h.2'", "gives 1 cut point ",
                                           "3 stages"), "too few pivots");
    // The embeddings and the head are no cut points: they stay on the end stages.
    check_error(g, 2, "wte,lm_head", NULL, NEEDLES("pipeline_pivots", "gives 0 cut points",
                                                   "2 stages"), "only end modules");
    check_error(g, 6, "layers", NULL, NEEDLES("pipeline_pivots", "gives 4 cut points",
                                              "6 stages"), "layers, too many stages");
    check_error(g, 7, NULL, NULL, NEEDLES("7 stages", "4 layers", "pipeline_pivots"),
                "boundaries, too many stages");
    // Every layer boundary and the head's start give 5 cuts: 6 stages fit, 5 with pivots.
    CHECK_OK(assign(g, 6, NULL, NULL, so));
    int counts6[6];
    layers_per_stage(g, so, 6, counts6);
    int ones = 1;
    for (int s = 1; s < 5; s++) ones &= counts6[s] == 1;
    CHECK_MSG(ones && counts6[0] == 0 && counts6[5] == 0, "6 stages of 4 layers");
    check_valid(g, so, 6, "6 stages");
    CHECK_OK(assign(g, 5, "layers", NULL, so));
    check_valid(g, so, 5, "pivots layers, 5 stages");
    free(so);
    loom_graph_destroy(g);

    // LLaMA names.
    g = build(LOOM_FAMILY_LLAMA, 4, 64, LOOM_GRAPH_TRAIN);
    so = malloc((size_t)g->n_nodes * sizeof *so);
    CHECK_OK(assign(g, 2, "layers.3", NULL, so));
    check_valid(g, so, 2, "llama pivots layers.3");
    f = first_of_stage(g, so, 1);
    CHECK_MSG(!strncmp(loom_node_module(g, f), "model.layers.3.", 15) && layer_of(g, f - 1) == 2,
              "llama pivots layers.3: stage 1 starts at '%s'", loom_node_module(g, f));
    CHECK_OK(assign(g, 2, "mlp", NULL, so));
    f = first_of_stage(g, so, 1);
    CHECK_MSG(strstr(loom_node_module(g, f), ".mlp") != NULL, "llama pivots mlp: '%s'",
              loom_node_module(g, f));
    check_valid(g, so, 2, "llama pivots mlp");
    free(so);
    loom_graph_destroy(g);
}

// ---- balancing ----------------------------------------------------------------------------------

// The cost the split balances: forward FLOPs plus the op table's backward estimate.
static double cost_of(loom_graph_t g, int i) {
    const loom_op_def *d = loom__op_def(g->nodes[i].op);
    double bwd = d->flops ? d->flops(g, &g->nodes[i], true)
                          : 2.0 * (double)loom__value_numel(g, g->nodes[i].out[0]);
    return loom_node_flops(g, i) + bwd;
}

typedef struct split_stats {
    double max, sumsq;
} split_stats;

static split_stats stats_of(const double *cost, int n, const int *cut, int S) {
    split_stats r = {0, 0};
    for (int s = 0; s < S; s++) {
        double c = 0;
        for (int p = cut[s]; p < cut[s + 1]; p++) c += cost[p];
        if (c > r.max) r.max = c;
        r.sumsq += c * c;
    }
    return r;
}

// Brute force over every choice of S-1 of the K candidate positions: the least maximum, and the
// least sum of squares among the splits within it.
static void brute(const double *cost, int n, const int *cand, int K, int S, int *pick, int depth,
                  int from, int *cut, split_stats *best) {
    if (depth == S - 1) {
        cut[0] = 0, cut[S] = n;
        for (int k = 0; k < S - 1; k++) cut[k + 1] = cand[pick[k]];
        split_stats st = stats_of(cost, n, cut, S);
        double tol = 1e-9 * best->max;
        if (st.max < best->max - tol ||
            (st.max <= best->max + tol && st.sumsq < best->sumsq))
            *best = st;
        return;
    }
    for (int k = from; k < K; k++) {
        pick[depth] = k;
        brute(cost, n, cand, K, S, pick, depth + 1, k + 1, cut, best);
    }
}

// The split balancing chose (no pivots, or "layers") against the brute-force optimum over the
// same candidates; returns the layers per stage in `counts`.
static void check_balanced(loom_graph_t g, int S, const char *pivots, int *counts,
                           const char *what) {
    int32_t *so = malloc((size_t)g->n_nodes * sizeof *so);
    int32_t *again = malloc((size_t)g->n_nodes * sizeof *again);
    double *cost = malloc((size_t)g->n_nodes * sizeof *cost);
    int *cand = malloc((size_t)g->n_nodes * sizeof *cand);
    int n = 0, K = 0, prev_layer = -1, chosen[MAX_STAGES + 1], cut[MAX_STAGES + 1],
        pick[MAX_STAGES];
    CHECK_OK(assign(g, S, pivots, NULL, so));
    CHECK_OK(assign(g, S, pivots, NULL, again));
    CHECK_MSG(!memcmp(so, again, (size_t)g->n_nodes * sizeof *so), "%s: not deterministic",
              what);
    check_valid(g, so, S, what);
    int seen_layer = 0, in_post = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        if (!is_fwd(g, i)) continue;
        int l = layer_of(g, i);
        // Candidates: each layer's start, and (without pivots) the post start.
        if (l >= 0 && l != prev_layer && n > 0) cand[K++] = n;
        if (l < 0 && seen_layer && !in_post && !pivots) cand[K++] = n, in_post = 1;
        if (l >= 0) seen_layer = 1, prev_layer = l;
        cost[n++] = cost_of(g, i);
    }
    // Positions of the stage starts in forward order.
    for (int s = 0, p = 0, i = 0; i < g->n_nodes; i++) {
        if (!is_fwd(g, i)) continue;
        if (so[i] == s) chosen[s++] = p;
        p++;
    }
    chosen[S] = n;
    int on_candidates = 1;
    for (int s = 1; s < S; s++) {
        int found = 0;
        for (int k = 0; k < K; k++) found |= cand[k] == chosen[s];
        on_candidates &= found;
    }
    CHECK_MSG(on_candidates, "%s: a cut is not at a layer boundary", what);
    split_stats best = {1e300, 1e300};
    brute(cost, n, cand, K, S, pick, 0, 0, cut, &best);
    split_stats got = stats_of(cost, n, chosen, S);
    CHECK_MSG(got.max <= best.max * (1 + 1e-9), "%s: max stage %.6g, optimum %.6g", what, got.max,
              best.max);
    CHECK_MSG(got.sumsq <= best.sumsq * (1 + 1e-6), "%s: sum of squares %.6g, optimum %.6g",
              what, got.sumsq, best.sumsq);
    layers_per_stage(g, so, S, counts);
    free(so), free(again), free(cost), free(cand);
}

static void test_balance(void) {
    int c[MAX_STAGES];
    // Small vocabulary: the head is cheap (~1/6 layer), so two stages take two layers each.
    loom_graph_t g = build(LOOM_FAMILY_GPT2, 4, 64, LOOM_GRAPH_TRAIN);
    check_balanced(g, 2, NULL, c, "gpt2 V=64, 2 stages");
    CHECK_MSG(c[0] == 2 && c[1] == 2, "gpt2 V=64: %d|%d layers, expected 2|2", c[0], c[1]);
    check_balanced(g, 2, "layers", c, "gpt2 V=64, pivots layers");
    CHECK_MSG(c[0] == 2 && c[1] == 2, "gpt2 V=64 pivots layers: %d|%d", c[0], c[1]);
    loom_graph_destroy(g);
    // V=512 at width 32: the head and loss cost ~1.3 layers (6*C*V = 98304 FLOPs per token
    // against 24*C^2*3 = 73728 for a layer's products), so 2|2 costs ~3.3 layers on the last
    // stage and 3|1 only ~3: the last stage gets fewer layers.
    g = build(LOOM_FAMILY_GPT2, 4, 512, LOOM_GRAPH_TRAIN);
    check_balanced(g, 2, NULL, c, "gpt2 V=512, 2 stages");
    CHECK_MSG(c[0] == 3 && c[1] == 1, "gpt2 V=512: %d|%d layers, expected 3|1", c[0], c[1]);
    check_balanced(g, 2, "layers", c, "gpt2 V=512, pivots layers");
    CHECK_MSG(c[0] == 3 && c[1] == 1, "gpt2 V=512 pivots layers: %d|%d", c[0], c[1]);
    check_balanced(g, 3, NULL, c, "gpt2 V=512, 3 stages");
    loom_graph_destroy(g);
    // A head worth ~10 layers takes a stage alone; the other stages still share the 8 layers
    // evenly (3,3,2 in some order) instead of one of them taking all the slack.
    g = build(LOOM_FAMILY_GPT2, 8, 4096, LOOM_GRAPH_TRAIN);
    check_balanced(g, 4, NULL, c, "gpt2 8 layers V=4096, 4 stages");
    CHECK_MSG(c[3] == 0 && c[0] + c[1] + c[2] == 8 && c[0] <= 3 && c[1] <= 3 && c[2] <= 3,
              "gpt2 V=4096: %d,%d,%d,%d layers", c[0], c[1], c[2], c[3]);
    loom_graph_destroy(g);
    g = build(LOOM_FAMILY_LLAMA, 6, 1024, LOOM_GRAPH_TRAIN);
    for (int S = 2; S <= 4; S++) {
        char what[64];
        snprintf(what, sizeof what, "llama 6 layers V=1024, %d stages", S);
        check_balanced(g, S, NULL, c, what);
        int last = c[S - 1], most = 0;
        for (int s = 0; s < S; s++) most = c[s] > most ? c[s] : most;
        CHECK_MSG(last < most, "%s: the head's stage has %d layers of at most %d", what, last,
                  most);
    }
    check_balanced(g, 3, "layers", c, "llama pivots layers, 3 stages");
    loom_graph_destroy(g);
}

// ---- other graphs -------------------------------------------------------------------------------

static void test_graph_kinds(void) {
    const int counts[4] = {1, 1, 1, 1};
    // Forward-only graph: no loss, the head ends the last stage.
    loom_graph_t g = build(LOOM_FAMILY_GPT2, 4, 64, LOOM_GRAPH_FORWARD);
    int32_t *so = malloc((size_t)g->n_nodes * sizeof *so);
    CHECK_OK(assign(g, 4, NULL, "1,1,1,1", so));
    check_exact(g, so, 4, counts, "forward graph");
    int c[2];
    check_balanced(g, 2, NULL, c, "forward graph balanced");
    free(so);
    loom_graph_destroy(g);
    // Recomputation clones (appended after the backward) run in the backward: -1 like it, and
    // the forward split is unchanged.
    g = build(LOOM_FAMILY_GPT2, 4, 64, LOOM_GRAPH_TRAIN);
    so = malloc((size_t)g->n_nodes * sizeof *so);
    CHECK_OK(assign(g, 4, NULL, "1,1,1,1", so));
    int n0 = g->n_nodes;
    int32_t *before = malloc((size_t)n0 * sizeof *before);
    memcpy(before, so, (size_t)n0 * sizeof *so);
    CHECK_OK(loom_graph_recompute(g, "layers"));
    CHECK(g->n_nodes > n0);
    free(so);
    so = malloc((size_t)g->n_nodes * sizeof *so);
    CHECK_OK(assign(g, 4, NULL, "1,1,1,1", so));
    int clones_out = 1;
    for (int i = n0; i < g->n_nodes; i++) clones_out &= so[i] == -1;
    CHECK_MSG(clones_out && !memcmp(so, before, (size_t)n0 * sizeof *so),
              "recompute clones change the split");
    check_exact(g, so, 4, counts, "with recompute clones");
    free(before), free(so);
    loom_graph_destroy(g);
}

// A hand-built graph with the modules named in `mods` (one add each, in order).
static loom_graph_t chain(const char *const *mods) {
    loom_graph_t g = NULL;
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, 2, (int64_t[]){2, 4});
    for (int k = 0; mods[k]; k++) {
        if (*mods[k]) loom_graph_push_scope(g, mods[k]);
        x = loom_add(g, x, x);
        if (*mods[k]) loom_graph_pop_scope(g);
    }
    CHECK_OK(loom_graph_status(g));
    return g;
}

// Layers h.0, h.1, ... of w[l] equal adds each (costs in proportion), no pre or post.
static loom_graph_t weighted(const int *w, int L) {
    loom_graph_t g = NULL;
    CHECK_OK(loom_graph_create(&g));
    loom_value x = loom_graph_input(g, "x", LOOM_DTYPE_F32, 2, (int64_t[]){2, 4});
    for (int l = 0; l < L; l++) {
        loom_graph_push_scopef(g, "h.%d", l);
        for (int k = 0; k < w[l]; k++) x = loom_add(g, x, x);
        loom_graph_pop_scope(g);
    }
    CHECK_OK(loom_graph_status(g));
    return g;
}

static void test_weighted(void) {
    const struct {
        int L, w[6], S, want[4];
        const char *why;
    } cases[] = {
        // The largest stage comes first: 1|5|2+3 (max 5), though 1+5|2|3 has the smaller sum
        // of squares.
        {4, {1, 5, 2, 3}, 3, {1, 1, 2}, "max before sum of squares"},
        // Ties go to the earlier cut: 2|3 and 3|2 cost the same.
        {5, {1, 1, 1, 1, 1}, 2, {2, 3}, "tie, 2 stages"},
        {4, {1, 1, 1, 1}, 3, {1, 1, 2}, "tie, 3 stages"},
        // Below the bottleneck (the 9) the rest still balance: 2+2|2+2|9, not 2|2+2+2|9.
        {5, {2, 2, 2, 2, 9}, 3, {2, 2, 1}, "balance under the bottleneck"},
    };
    int32_t so[64];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        loom_graph_t g = weighted(cases[c].w, cases[c].L);
        int got[4];
        CHECK_OK(assign(g, cases[c].S, NULL, NULL, so));
        check_valid(g, so, cases[c].S, cases[c].why);
        layers_per_stage(g, so, cases[c].S, got);
        int same = 1;
        for (int s = 0; s < cases[c].S; s++) same &= got[s] == cases[c].want[s];
        CHECK_MSG(same, "%s: %d,%d,%d layers per stage", cases[c].why, got[0], got[1],
                  cases[c].S > 2 ? got[2] : -1);
        loom_graph_destroy(g);
    }
}

static void test_hand_graphs(void) {
    int32_t so[16];
    // A layer interrupted by another layer, or by a node outside any layer: not a pipeline.
    loom_graph_t g = chain(NEEDLES("h.0", "h.1", "h.0"));
    check_error(g, 2, NULL, "1,1", NEEDLES("layer 'h.0'", "not contiguous", "h.1"),
                "layer comes back");
    loom_graph_destroy(g);
    g = chain(NEEDLES("emb", "h.0", "norm", "h.0", "h.1"));
    check_error(g, 2, NULL, NULL, NEEDLES("layer 'h.0'", "not contiguous", "'norm'"),
                "node inside a layer");
    loom_graph_destroy(g);
    // A node outside the layers between two of them stays with the layer before it.
    g = chain(NEEDLES("emb", "h.0", "mid", "h.1", "head"));
    CHECK_OK(assign(g, 2, NULL, "1,1", so));
    CHECK_MSG(so[0] == 0 && so[1] == 0 && so[2] == 0 && so[3] == 1 && so[4] == 1,
              "between layers: %d %d %d %d %d", so[0], so[1], so[2], so[3], so[4]);
    loom_graph_destroy(g);
    // No numbered layers: pivots cut anywhere after the first node; balancing has nothing.
    g = chain(NEEDLES("a", "b", "c", "d"));
    CHECK_OK(assign(g, 3, "b,d", NULL, so));
    CHECK_MSG(so[0] == 0 && so[1] == 1 && so[2] == 1 && so[3] == 2, "pivots b,d: %d %d %d %d",
              so[0], so[1], so[2], so[3]);
    CHECK_OK(assign(g, 1, NULL, NULL, so));
    CHECK_MSG(so[0] == 0 && so[3] == 0, "one stage");
    check_error(g, 2, NULL, NULL, NEEDLES("2 stages", "0 layers", "pipeline_pivots"),
                "no layers to cut at");
    check_error(g, 2, "a", NULL, NEEDLES("pipeline_pivots", "'a'", "gives 0 cut points"),
                "pivot at node 0 only");
    check_error(g, 2, NULL, "-1,-1", NEEDLES("pipeline_layers", "stage 1", "no nodes",
                                             "0 layers"), "layers with no layers");
    loom_graph_destroy(g);
    // A repeated pivot instance begins once: "b" comes back after "c".
    g = chain(NEEDLES("a", "b", "c", "b", "d"));
    check_error(g, 3, "b", NULL, NEEDLES("pipeline_pivots", "gives 1 cut point "),
                "instance begins once");
    loom_graph_destroy(g);
}

int main(void) {
    test_layers(LOOM_FAMILY_GPT2, "gpt2", "h");
    test_layers(LOOM_FAMILY_LLAMA, "llama", "model.layers");
    test_layer_errors();
    test_pivots();
    test_balance();
    test_graph_kinds();
    test_hand_graphs();
    test_weighted();
    return tu_finish();
}
