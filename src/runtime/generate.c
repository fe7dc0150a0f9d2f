// Sampling with a key/value cache: one decode program (T = 1) run once per position.

#include "loom/train.h"

#include "core/core.h"
#include "models/family.h"
#include "runtime/runner.h"

#include <math.h>
#include <string.h>

loom_sample_config loom_sample_config_default(void) {
    return (loom_sample_config){.temperature = 1.0f, .top_k = 40, .seed = 1337, .threads = 0};
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

// Pick a token from logits (V): greedy at temperature 0, else softmax sampling over the top k.
static int32_t sample(const float *logits, int V, const loom_sample_config *cfg, float *probs,
                      uint64_t *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (cfg->temperature <= 0) return best;
    float kth = -INFINITY;
    if (cfg->top_k > 0 && cfg->top_k < V) {
        // k-th largest logit by repeated selection over a copy (V is small next to the model).
        memcpy(probs, logits, (size_t)V * sizeof(float));
        for (int k = 0; k < cfg->top_k; k++) {
            int m = 0;
            for (int i = 1; i < V; i++)
                if (probs[i] > probs[m]) m = i;
            kth = probs[m];
            probs[m] = -INFINITY;
        }
    }
    double sum = 0;
    for (int i = 0; i < V; i++) {
        probs[i] = logits[i] >= kth ? expf((logits[i] - logits[best]) / cfg->temperature) : 0.0f;
        sum += probs[i];
    }
    double u = (double)(xorshift(rng) >> 11) / 9007199254740992.0 * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        acc += probs[i];
        if (u < acc) return i;
    }
    return best;
}

loom_status loom_generate(loom_model_t model, const int32_t *prompt, int n_prompt, int n_new,
                          const loom_sample_config *cfg, loom_token_fn on_token, void *user,
                          int32_t *out, int *n_out) {
    *n_out = 0;
    const loom_model_config *mc = loom_model_get_config(model);
    if (n_prompt <= 0 || n_new < 0)
        return loom__error(LOOM_ERR_INVALID, "generate: the prompt must hold at least one token");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= mc->vocab_size)
            return loom__error(LOOM_ERR_INVALID, "generate: prompt token %d at position %d is "
                               "outside the vocabulary (%d)", prompt[i], i, mc->vocab_size);
    int cache_len = n_prompt + n_new;
    if (cache_len > mc->max_seq) {
        if (n_prompt >= mc->max_seq)
            return loom__error(LOOM_ERR_INVALID, "generate: the prompt (%d tokens) does not fit "
                               "the model's context (%d)", n_prompt, mc->max_seq);
        n_new = mc->max_seq - n_prompt;
        cache_len = mc->max_seq;
    }
    const loom_backend_i *be = loom__backend_cpu();
    be->set_threads(cfg->threads);
    loom_graph_t g = NULL;
    loom_program *prog = NULL;
    loom_runner *r = NULL;
    float *probs = NULL;
    LOOM_CHECK(loom_model_build_graph(model, LOOM_GRAPH_DECODE, 1, 1, cache_len, &g));
    loom_lower_options lo = {.train = 0, .micro_batches = 1};
    loom_status st = loom__lower(g, &lo, &prog);
    if (st < 0) goto done;
    size_t n_floats;
    float *params = loom__model_storage(model, &n_floats);
    LOOM_ASSERT(prog->region_bytes[LOOM_REGION_PARAM] == n_floats * sizeof(float));
    st = loom__runner_create(prog, be, params, &r);
    prog = NULL;  // owned by the runner now (freed by it on failure too)
    if (st < 0) goto done;
    probs = loom__malloc((size_t)mc->vocab_size * sizeof(float));
    if (!probs) {
        st = LOOM_ERR_NOMEM;
        goto done;
    }
    loom_value tok_v = loom_graph_find(g, "tokens"), pos_v = loom_graph_find(g, "positions");
    loom_value logits_v = -1;
    for (int v = 0; v < g->n_values; v++)
        if (g->values[v].is_output) logits_v = v;
    LOOM_ASSERT(tok_v >= 0 && pos_v >= 0 && logits_v >= 0);
    uint64_t rng = cfg->seed ? cfg->seed : 0x9E3779B97F4A7C15ull;
    int32_t token = prompt[0], position = 0;
    r->batch_src[tok_v] = &token;
    r->batch_src[pos_v] = &position;
    for (position = 0; position < n_prompt + n_new - 1; position++) {
        token = position < n_prompt ? prompt[position] : out[position - n_prompt];
        st = loom__runner_run(r);
        if (st < 0) goto done;
        if (position + 1 < n_prompt) continue;  // still reading the prompt
        int32_t next = sample(r->ptr[logits_v], mc->vocab_size, cfg, probs, &rng);
        out[(*n_out)++] = next;
        if (on_token && on_token(next, user)) break;
    }
done:
    loom__free(probs);
    loom__runner_free(r);
    loom__program_free(prog);
    loom_graph_destroy(g);
    return st;
}
