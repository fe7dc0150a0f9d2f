// Pipeline parity on the `local` communicator: tiny GPT-2 (wte tied to lm_head across the first
// and last stage) and LLaMA trained 3 AdamW steps under pp2, pp4, pp2 x tp2, pp2 x dp2 and
// pp2 x tp2 x dp2, every schedule, recomputation on and off: losses and merged parameters equal
// the single-device run with the same total batch to relative 1e-5. Also: 1F1B's activation
// memory stays within the pipeline depth while GPipe's grows with the micro-batches, dummy
// micro-batches contribute nothing, and bad pipeline settings fail clearly.

#include "loom/checkpoint.h"
#include "loom/parallel.h"
#include "models/family.h"
#include "runtime/runner.h"
#include "oracle-model.h"
#include "parity.h"
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define B 8
#define T 16
#define STEPS 3

typedef parity_reference reference;

static int32_t tokens[B * T], targets[B * T];

static loom_train_config train_config(void) { return parity_train_config(B, T); }

// A 4-layer model of the family (random init, fixed seed) or an oracle directory.
static loom_model_t make_model(const char *name) {
    if (strcmp(name, "gpt2-4") != 0) return load_oracle(name);
    loom_model_config cfg;
    CHECK_OK(loom_model_config_parse("{\"model_type\": \"gpt2\", \"n_layer\": 4, \"n_embd\": 32, "
                                     "\"n_head\": 4, \"n_positions\": 32, \"vocab_size\": 96}",
                                     "gpt2-4", &cfg));
    loom_model_t m = NULL;
    CHECK_OK(loom_model_create(&cfg, 7, &m));
    return m;
}

static void single_device(const char *name, reference *ref) {
    loom_model_t m = make_model(name);
    loom_train_config tc = train_config();
    parity_reference_run(m, &tc, tokens, targets, STEPS, ref);
    loom_model_free(m);
}

typedef struct pipe_case {
    int pp, tp, dp, micros;
    loom_schedule schedule;
    int chunks;
    const char *layers;     // NULL: balanced
    const char *recompute;  // NULL: none
    int zero;               // ZeRO-1 over the data-parallel units
    int measured;           // balance by measured op costs
} pipe_case;

static loom_compute_config pipe_config(const pipe_case *c) {
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = c->tp > 1 ? LOOM_POLICY_HYBRID : LOOM_POLICY_PP;
    cc.plan_ndevices = c->pp * c->tp;
    cc.runtime_ndevices = c->pp * c->tp * c->dp;
    cc.pipeline_nstages = c->pp;
    cc.pipeline_nmicros = c->micros;
    cc.pipeline_scheduler = c->schedule;
    cc.pipeline_nchunks = c->chunks;
    cc.pipeline_layers = c->layers;
    cc.bucket_bytes = 4096;
    cc.timeout_s = 30;
    cc.use_zero = c->zero;
    cc.pipeline_measured = c->measured;
    return cc;
}

static void parity(const char *name, const reference *ref, pipe_case c) {
    char what[200];
    snprintf(what, sizeof what, "%s pp%d tp%d dp%d m%d %s chunks %d layers %s%s%s%s", name, c.pp,
             c.tp, c.dp, c.micros, loom_schedule_name(c.schedule), c.chunks ? c.chunks : 1,
             c.layers ? c.layers : "balanced", c.recompute ? " recompute " : "",
             c.recompute ? c.recompute : "", c.zero ? " zero" : c.measured ? " measured" : "");
    loom_model_t m = make_model(name);
    loom_compute_config cc = pipe_config(&c);
    loom_train_config tc = train_config();
    tc.recompute = c.recompute;
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st == 0, "%s: %s", what, loom_last_error());
    if (st < 0) {
        loom_model_free(m);
        return;
    }
    // Inference (infer_pipe) first: the forward-only loss is the first step's loss.
    float eval_loss = 0;
    CHECK_OK(loom_parallel_eval(p, tokens, targets, &eval_loss));
    CHECK_MSG(fabs(eval_loss - ref->losses[0]) <= 1e-5 * fabs(ref->losses[0]),
              "%s: eval loss %.7f vs %.7f", what, eval_loss, ref->losses[0]);
    double worst_loss, worst_param;
    parity_steps(p, m, ref, tokens, targets, STEPS, what, &worst_loss, &worst_param);
    printf("%-62s loss rel err %.1e, parameters %.1e\n", what, worst_loss, worst_param);
    loom_parallel_free(p);
    loom_model_free(m);
}

// Activations of stage 0 (rank 0) under a schedule with `micros` micro-batches.
static size_t stage0_activations(loom_schedule schedule, int micros) {
    loom_model_t m = make_model("gpt2-4");
    pipe_case c = {4, 1, 1, micros, schedule, 1, "1,1,1,1", NULL, 0, 0};
    loom_compute_config cc = pipe_config(&c);
    loom_train_config tc = train_config();
    tc.batch = micros;  // one sequence per micro-batch
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    size_t bytes = p ? loom_parallel_memory(p, 0).activations : 0;
    loom_parallel_free(p);
    loom_model_free(m);
    return bytes;
}

// 1F1B holds at most `stages` micro-batches on stage 0, GPipe all of them.
static void test_memory_bound(void) {
    size_t one = stage0_activations(LOOM_SCHEDULE_GPIPE, 1);  // one micro-batch in flight
    size_t f4 = stage0_activations(LOOM_SCHEDULE_1F1B, 4);
    size_t f8 = stage0_activations(LOOM_SCHEDULE_1F1B, 8);
    size_t f16 = stage0_activations(LOOM_SCHEDULE_1F1B, 16);
    size_t g4 = stage0_activations(LOOM_SCHEDULE_GPIPE, 4);
    size_t g8 = stage0_activations(LOOM_SCHEDULE_GPIPE, 8);
    size_t g16 = stage0_activations(LOOM_SCHEDULE_GPIPE, 16);
    printf("stage 0 activations (4 stages): one micro-batch %zu bytes; 1f1b m=4/8/16 %zu/%zu/%zu, "
           "gpipe %zu/%zu/%zu\n", one, f4, f8, f16, g4, g8, g16);
    // 1F1B: stage 0 holds at most 4 micro-batches whatever m (the arena's placement may differ
    // by a few blocks between schedules, never by a micro-batch).
    size_t bound = 4 * one;
    CHECK_MSG(f4 <= bound && f8 <= bound && f16 <= bound, "1f1b stage 0 exceeds 4 micro-batches "
              "(%zu): %zu %zu %zu", bound, f4, f8, f16);
    CHECK_MSG(f16 < f4 + one / 2, "1f1b stage 0 grows with m: %zu %zu %zu", f4, f8, f16);
    // GPipe: every micro-batch in flight, so the saved activations double with m.
    CHECK_MSG(g8 > g4 * 17 / 10 && g16 > g8 * 17 / 10 && g16 > 2 * bound,
              "gpipe does not grow with m: %zu %zu %zu", g4, g8, g16);
}

// train_step with fewer samples than micro-batches: the dummies change nothing, so two real
// samples under a 4-micro-batch pipeline train exactly as the single-device trainer on those
// two (grad_accum 2, one sample each).
static void test_dummies(void) {
    loom_model_t ref_model = make_model("gpt2");
    loom_train_config tc = train_config();
    tc.batch = 2;
    tc.grad_accum = 2;
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(ref_model, &tc, &t));
    loom_step_stats ref_stats;
    CHECK_OK(loom_trainer_step(t, tokens, targets, &ref_stats));
    loom_model_t m = make_model("gpt2");
    pipe_case c = {2, 1, 1, 4, LOOM_SCHEDULE_1F1B, 1, NULL, NULL, 0, 0};
    loom_compute_config cc = pipe_config(&c);
    loom_train_config ptc = train_config();
    ptc.batch = 8;  // 4 micro-batches of 2 sequences
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &ptc, &p));
    CHECK(loom_parallel_micro_batches(p) == 4 && loom_parallel_micro_rows(p) == 2);
    loom_sample samples[2] = {{tokens, targets}, {tokens + 2 * T, targets + 2 * T}};
    float losses[2] = {0, 0}, infer[2] = {0, 0};
    CHECK_OK(loom_parallel_infer_step(p, samples, 2, infer));
    loom_step_stats stats;
    CHECK_OK(loom_parallel_train_step(p, samples, 2, losses, &stats));
    CHECK_MSG(fabs(stats.loss - ref_stats.loss) <= 1e-5 * fabs(ref_stats.loss),
              "train_step with dummies: loss %.7f vs %.7f", stats.loss, ref_stats.loss);
    CHECK_MSG(fabs(0.5f * (losses[0] + losses[1]) - stats.loss) <= 1e-5 * stats.loss,
              "per-sample losses %.7f %.7f do not average to %.7f", losses[0], losses[1],
              stats.loss);
    for (int k = 0; k < 2; k++)
        CHECK_MSG(fabs(infer[k] - losses[k]) <= 1e-5 * losses[k],
                  "sample %d: infer_step %.7f vs train_step %.7f", k, infer[k], losses[k]);
    CHECK_OK(loom_parallel_sync_model(p));
    double worst = 0;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const char *pname = loom_model_tensor_name(m, i, NULL, NULL);
        float *a, *b;
        int64_t n;
        loom_model_tensor(m, pname, &a, &n);
        loom_model_tensor(ref_model, pname, &b, NULL);
        for (int64_t k = 0; k < n; k++) {
            double d = fabs((double)a[k] - b[k]) / (fabs(b[k]) + 1e-3);
            if (d > worst) worst = d;
        }
    }
    CHECK_MSG(worst < 1e-4, "train_step with dummies: parameters differ (%.2e)", worst);
    // Too many samples is an error naming the limit.
    loom_sample many[5] = {samples[0], samples[1], samples[0], samples[1], samples[0]};
    CHECK(loom_parallel_train_step(p, many, 5, NULL, NULL) == LOOM_ERR_INVALID &&
          strstr(loom_last_error(), "1 to 4"));
    loom_parallel_free(p);
    loom_trainer_free(t);
    loom_model_free(m);
    loom_model_free(ref_model);
}

static const char *gpt2_file_name(const char *name, char *buf, size_t cap) {
    return loom__family(LOOM_FAMILY_GPT2)->param_to_file(name, buf, cap);
}

static loom_parallel_t start(loom_model_t m, pipe_case c) {
    loom_compute_config cc = pipe_config(&c);
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    return p;
}

// Two steps on pp2 x tp2 x dp2 (tied wte on both stages), save sharded, merge; resume on other
// plans (pp4 with the embeddings and head on their own stages from the shards, one device
// from the merged directory): the third step and the final parameters are the single-device
// ones, and the merged directory holds every parameter once.
static void test_checkpoint(const reference *ref) {
    char tmp[] = "/tmp/loom-test-pipe-ckpt-XXXXXX", shards[600], merged[600];
    if (!mkdtemp(tmp)) return;
    snprintf(shards, sizeof shards, "%s/shards", tmp);
    snprintf(merged, sizeof merged, "%s/merged", tmp);
    loom_model_t m = make_model("gpt2");
    loom_parallel_t p = start(m, (pipe_case){2, 2, 2, 2, LOOM_SCHEDULE_1F1B, 1, NULL, NULL, 0, 0});
    for (int s = 0; p && s < 2; s++) CHECK_OK(loom_parallel_step(p, tokens, targets, NULL));
    if (p) CHECK_OK(loom_parallel_save_sharded(p, shards));
    loom_parallel_free(p);
    loom_model_free(m);
    CHECK_OK(loom_checkpoint_merge(shards, merged, gpt2_file_name));
    loom_model_t hf = NULL;
    CHECK_OK(loom_model_load(merged, &hf));
    loom_model_free(hf);
    struct { const char *from; pipe_case c; } resume[] = {
        {shards, {4, 1, 1, 4, LOOM_SCHEDULE_GPIPE, 1, "0,1,1,0", NULL, 0, 0}},
        {merged, {1, 1, 1, 1, LOOM_SCHEDULE_1F1B, 1, NULL, NULL, 0, 0}},
    };
    for (int k = 0; k < 2; k++) {
        m = make_model("gpt2");
        p = start(m, resume[k].c);
        if (!p) continue;
        CHECK_OK(loom_parallel_load_checkpoint(p, resume[k].from));
        loom_step_stats st;
        CHECK_OK(loom_parallel_step(p, tokens, targets, &st));
        CHECK_MSG(fabs(st.loss - ref->losses[2]) <= 1e-5 * fabs(ref->losses[2]),
                  "resumed from %s (case %d): loss %.7f vs %.7f", resume[k].from, k, st.loss,
                  ref->losses[2]);
        CHECK_OK(loom_parallel_sync_model(p));
        double worst = parity_params_error(m, ref, NULL);
        CHECK_MSG(worst < 1e-5, "resumed (case %d): parameters relative error %.3g", k, worst);
        printf("saved on pp2 x tp2 x dp2, resumed on pp%d: loss %.7f, parameters %.1e\n",
               resume[k].c.pp, st.loss, worst);
        loom_parallel_free(p);
        loom_model_free(m);
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    CHECK(system(cmd) == 0);
}

// Balancing by measured op costs sees what FLOPs see in an extreme case: with a vocabulary of
// 8192 the head costs more than all 4 layers, so the last of 2 stages gets none of them (its
// parameters are the tied embedding and ln_f only).
static void test_measured_balance(void) {
    loom_model_config cfg;
    CHECK_OK(loom_model_config_parse("{\"model_type\": \"gpt2\", \"n_layer\": 4, \"n_embd\": 32, "
                                     "\"n_head\": 4, \"n_positions\": 32, \"vocab_size\": 8192}",
                                     "gpt2-big-vocab", &cfg));
    for (int measured = 0; measured < 2; measured++) {
        loom_model_t m = NULL;
        CHECK_OK(loom_model_create(&cfg, 7, &m));
        pipe_case c = {2, 1, 1, 2, LOOM_SCHEDULE_1F1B, 1, NULL, NULL, 0, measured};
        loom_compute_config cc = pipe_config(&c);
        loom_train_config tc = train_config();
        loom_parallel_t p = NULL;
        CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
        size_t wte = 8192 * 32 * sizeof(float), ln_f = 2 * 32 * sizeof(float) + 128;
        size_t last = p ? loom_parallel_memory(p, 1).parameters : 0;
        CHECK_MSG(last >= wte && last <= wte + ln_f, "%s balance: the head stage holds %zu "
                  "parameter bytes (the embedding is %zu): it got layers",
                  measured ? "measured" : "flops", last, wte);
        loom_parallel_free(p);
        loom_model_free(m);
    }
}

// Measured op costs are cached on disk: a second measurement in the same process reads the cache
// (here edited to sentinel forward and backward times, whose sum must come back) instead of
// timing the ops again. Another process refines an entry measured by only one process once (its
// best time kept: a huge sentinel is replaced), and leaves an entry measured by two alone.
static void test_cost_cache(const char *dir) {
    char path[600];
    loom_model_t m = make_model("gpt2");
    loom_graph_t g = NULL;
    CHECK_OK(loom_model_build_graph(m, LOOM_GRAPH_FORWARD, 2, T, 0, &g));
    int n = g ? g->n_nodes : 0;
    double *first = calloc((size_t)n + 1, sizeof(double)), *again = calloc((size_t)n + 1, sizeof(double));
    CHECK_OK(loom__measure_costs(g, 1, first));
    double total = 0;
    for (int i = 0; i < n; i++) total += first[i];
    CHECK_MSG(total > 0, "measured costs sum to %g", total);
    snprintf(path, sizeof path, "%s/loom/ops/cpu.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *ops = json_object_get(root, "ops");
    CHECK_MSG(json_object_size(ops) > 3, "the cache %s holds %zu ops", path, json_object_size(ops));
    const char *key;
    json_t *value;
    json_object_foreach(ops, key, value) {
        CHECK(json_array_size(value) == 4);  // [forward s, backward s, processes, last one's]
        CHECK(json_integer_value(json_array_get(value, 2)) == 1);
        json_real_set(json_array_get(value, 0), 0.125);
        json_real_set(json_array_get(value, 1), 0.25);
    }
    CHECK(json_dump_file(root, path, 0) == 0);
    json_decref(root);
    CHECK_OK(loom__measure_costs(g, 1, again));
    int sentinel = 0, measured = 0;
    for (int i = 0; i < n; i++) {
        measured += first[i] > 0;
        sentinel += again[i] == 0.375;
    }
    CHECK_MSG(sentinel == measured && measured > 0, "%d of %d costs came from the cache", sentinel,
              measured);
    // As if another process had measured them: refined once (huge sentinels replaced), then kept.
    for (int pass = 0; pass < 2; pass++) {
        root = json_load_file(path, 0, NULL);
        ops = json_object_get(root, "ops");
        json_object_foreach(ops, key, value) {
            json_real_set(json_array_get(value, 0), 1000.0);
            json_real_set(json_array_get(value, 1), 1000.0);
            json_integer_set(json_array_get(value, 2), pass == 0 ? 1 : 2);
            json_integer_set(json_array_get(value, 3), 1);  // not this process
        }
        CHECK(json_dump_file(root, path, 0) == 0);
        json_decref(root);
        CHECK_OK(loom__measure_costs(g, 1, again));
        int huge = 0;
        for (int i = 0; i < n; i++) huge += again[i] == 2000.0;
        CHECK_MSG(pass == 0 ? huge == 0 : huge == measured, "pass %d: %d of %d costs still the "
                  "sentinel", pass, huge, measured);
    }
    free(first), free(again);
    loom_graph_destroy(g);
    loom_model_free(m);
}

static void expect_error(pipe_case c, const char *fragment) {
    loom_model_t m = make_model("gpt2");
    loom_compute_config cc = pipe_config(&c);
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st < 0 && strstr(loom_last_error(), fragment), "expected an error with '%s', got "
              "%d '%s'", fragment, st, st < 0 ? loom_last_error() : "");
    loom_parallel_free(p);
    loom_model_free(m);
}

static void test_errors(void) {
    expect_error((pipe_case){2, 1, 1, 3, LOOM_SCHEDULE_1F1B, 1, NULL, NULL, 0, 0}, "micro-batches");
    expect_error((pipe_case){2, 1, 1, 2, LOOM_SCHEDULE_1F1B, 2, NULL, NULL, 0, 0}, "1f1b_interleaved");
    expect_error((pipe_case){2, 1, 1, 2, LOOM_SCHEDULE_1F1B, 1, "1,1,1", NULL, 0, 0}, "pipeline_layers");
    expect_error((pipe_case){4, 1, 1, 4, LOOM_SCHEDULE_1F1B, 1, "1,0,0,1", NULL, 0, 0}, "pipeline_layers");
    expect_error((pipe_case){2, 1, 1, 2, LOOM_SCHEDULE_INFER_PIPE, 1, NULL, NULL, 0, 0}, "infer_pipe");
}

int main(void) {
    // Measured op costs are cached under XDG_CACHE_HOME: keep the user's cache out of the tests.
    char cache[] = "/tmp/loom-test-cache-XXXXXX";
    if (!mkdtemp(cache)) return 1;
    setenv("XDG_CACHE_HOME", cache, 1);
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 37 + 11) % 96;
        targets[i] = (i % 13 == 5) ? -100 : (i * 53 + 7) % 96;
    }
    reference gpt2, llama, gpt4;
    single_device("gpt2", &gpt2);
    single_device("llama", &llama);
    single_device("gpt2-4", &gpt4);
    const loom_schedule F = LOOM_SCHEDULE_1F1B, G = LOOM_SCHEDULE_GPIPE,
                        I = LOOM_SCHEDULE_1F1B_INTERLEAVED;
    // pp2: every schedule, balanced and explicit stages, recomputation.
    parity("gpt2", &gpt2, (pipe_case){2, 1, 1, 4, F, 1, NULL, NULL, 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 1, 4, G, 1, "1,1", NULL, 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 1, 4, I, 2, "0,1,1,0", NULL, 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 1, 4, F, 1, NULL, "layers", 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 1, 2, G, 1, NULL, "attn", 0, 0});
    parity("llama", &llama, (pipe_case){2, 1, 1, 4, F, 1, NULL, NULL, 0, 0});
    parity("llama", &llama, (pipe_case){2, 1, 1, 4, I, 2, "0,1,1,0", "layers", 0, 0});
    // pp4: embeddings and head on their own stages.
    parity("gpt2", &gpt2, (pipe_case){4, 1, 1, 4, F, 1, "0,1,1,0", NULL, 0, 0});
    parity("gpt2", &gpt2, (pipe_case){4, 1, 1, 8, G, 1, "0,1,1,0", NULL, 0, 0});
    parity("llama", &llama, (pipe_case){4, 1, 1, 4, F, 1, "0,1,1,0", "layers", 0, 0});
    parity("gpt2-4", &gpt4, (pipe_case){4, 1, 1, 8, F, 1, NULL, NULL, 0, 0});
    parity("gpt2-4", &gpt4, (pipe_case){2, 1, 1, 4, I, 2, NULL, NULL, 0, 0});
    // Hybrids: pp2 x tp2, pp2 x dp2, pp2 x tp2 x dp2 (8 ranks).
    parity("gpt2", &gpt2, (pipe_case){2, 2, 1, 2, F, 1, NULL, NULL, 0, 0});
    parity("llama", &llama, (pipe_case){2, 2, 1, 4, G, 1, NULL, "layers", 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 2, 2, F, 1, NULL, NULL, 0, 0});
    parity("llama", &llama, (pipe_case){2, 1, 2, 2, I, 2, "0,1,1,0", NULL, 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 2, 2, 2, F, 1, NULL, NULL, 0, 0});
    parity("llama", &llama, (pipe_case){2, 2, 2, 2, F, 1, NULL, "layers", 0, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 1, 2, 2, F, 1, NULL, NULL, 1, 0});
    parity("gpt2", &gpt2, (pipe_case){2, 2, 2, 4, G, 1, NULL, NULL, 1, 0});
    parity("gpt2-4", &gpt4, (pipe_case){2, 1, 1, 4, F, 1, NULL, NULL, 0, 1});
    parity("gpt2-4", &gpt4, (pipe_case){4, 1, 1, 4, F, 1, NULL, NULL, 0, 1});
    test_memory_bound();
    test_checkpoint(&gpt2);
    test_measured_balance();
    test_cost_cache(cache);
    test_dummies();
    test_errors();
    parity_reference_free(&gpt2);
    parity_reference_free(&llama);
    parity_reference_free(&gpt4);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cache);
    CHECK(system(cmd) == 0);
    return tu_finish();
}
