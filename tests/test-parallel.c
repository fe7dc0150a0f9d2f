// Parallel parity on the `local` communicator: tiny GPT-2, LLaMA (GQA) and Qwen2 (one kv head,
// q/k/v biases, tied head) trained 3 AdamW steps under dp2, dp4, data2, tp2, tp4 and dp2 x tp2
// must give the single-device losses and (merged) parameters to relative 1e-5; plans that
// cannot split the model fail with a message naming the op.

#include "loom/checkpoint.h"
#include "loom/parallel.h"
#include "models/family.h"
#include "oracle-model.h"
#include "parity.h"
#include "testutil.h"

#include <unistd.h>

#include <stdlib.h>
#include <string.h>

#define B 4
#define T 16
#define STEPS 3

typedef parity_reference reference;

static int32_t tokens[B * T], targets[B * T];

static int g_grad_accum = 1;  // micro-batches per step (the global batch is split into them)

static loom_train_config train_config(void) {
    loom_train_config tc = parity_train_config(B / g_grad_accum, T);
    tc.grad_accum = g_grad_accum;
    return tc;
}

static void single_device(const char *name, reference *ref) {
    loom_model_t m = load_oracle(name);
    loom_train_config tc = train_config();
    parity_reference_run(m, &tc, tokens, targets, STEPS, ref);
    loom_model_free(m);
}

typedef struct zero_opts {
    int use, groups, reduce_scatter;
    int sync_reducer;  // one all-reduce after the backward instead of overlapped buckets
} zero_opts;

static const zero_opts no_zero = {0, 1, 1, 0};

// Partition constraints, policy callback and plan file the next parity() runs use.
static loom_constraints_t g_constraints;
static loom_policy_fn g_policy_fn;
static const char *g_plan_file;
static float g_loss_scale = 1.0f;  // static loss scaling of the parallel run
static const char *g_recompute;    // recomputation of the parallel run

static void parity(const char *name, const reference *ref, loom_policy policy, int plan,
                   int runtime, zero_opts zero) {
    char what[128];
    snprintf(what, sizeof what, "%s %s plan %d runtime %d%s%s%s%s", name, loom_policy_name(policy),
             plan, runtime, !zero.use ? "" : zero.reduce_scatter ? " zero rs" : " zero ar",
             zero.sync_reducer ? " sync reducer" : "", g_constraints ? " constrained" : "",
             g_loss_scale != 1.0f ? " loss scale" : g_recompute ? " recompute" : "");
    if (zero.use && zero.groups > 1)
        snprintf(what + strlen(what), sizeof what - strlen(what), " %d groups", zero.groups);
    loom_model_t m = load_oracle(name);
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = policy;
    cc.plan_ndevices = plan;
    cc.runtime_ndevices = runtime;
    cc.timeout_s = 30;
    cc.use_zero = zero.use;
    cc.zero_ngroups = zero.groups;
    cc.zero_reduce_scatter = zero.reduce_scatter;
    cc.bucket_bytes = 4096;  // several buckets even for these tiny models
    cc.async_reducer = !zero.sync_reducer;
    cc.constraints = g_constraints;
    cc.policy_fn = g_policy_fn;
    cc.plan_file = g_plan_file;
    loom_train_config tc = train_config();
    tc.loss_scale = g_loss_scale;
    tc.recompute = g_recompute;
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st == 0, "%s: %s", what, loom_last_error());
    if (st < 0) {
        loom_model_free(m);
        return;
    }
    if (zero.use) {
        // ZeRO-1: each rank keeps 1/(units per group) of the AdamW moments.
        loom_memory_stats mem = loom_parallel_memory(p, 0);
        int share = runtime / plan / zero.groups;
        CHECK_MSG(mem.optimizer * (size_t)share == 2 * mem.parameters,
                  "%s: optimizer state %zu bytes, parameters %zu", what, mem.optimizer,
                  mem.parameters);
    }
    // Inference first: the forward-only loss of the batch is the first step's loss (with one
    // micro-batch per step; eval reads one micro-batch).
    float eval_loss = 0;
    CHECK_OK(loom_parallel_eval(p, tokens, targets, &eval_loss));
    CHECK_MSG(g_grad_accum > 1 || fabs(eval_loss - ref->losses[0]) <= 1e-5 * fabs(ref->losses[0]),
              "%s: eval loss %.7f vs %.7f", what, eval_loss, ref->losses[0]);
    double worst_loss, worst_param;
    parity_steps(p, m, ref, tokens, targets, STEPS, what, &worst_loss, &worst_param);
    printf("%-36s loss rel err %.1e, parameters %.1e\n", what, worst_loss, worst_param);
    loom_parallel_free(p);
    loom_model_free(m);
}

static loom_constraints_t constraints(const char *yaml) {
    loom_constraints_t c = NULL;
    CHECK_OK(loom_constraints_parse(yaml, strlen(yaml), "test.yaml", &c));
    return c;
}

// Constraints that force hybrid layouts must keep the single-device numbers: tensor parallel
// with the MLP's first projection replicated, and the batch-split "data" policy with attention
// split by heads instead.
static void test_constraints(const char *name, const reference *ref) {
    g_constraints = constraints(
        "- name: loom.conv1d\n  parent_module: mlp.c_fc\n  allowed_partition_dims: []\n"
        "- name: loom.linear\n  parent_module: mlp.gate_proj\n  allowed_partition_dims: []\n");
    parity(name, ref, LOOM_POLICY_TP, 2, 2, no_zero);
    loom_constraints_free(g_constraints);
    g_constraints = constraints("- name: loom.attention\n  allowed_partition_dims:\n  - 0,2\n"
                                "  replica_allowed: false\n");
    parity(name, ref, LOOM_POLICY_DATA, 2, 2, no_zero);
    loom_constraints_free(g_constraints);
    g_constraints = NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// A user policy: the MLPs Megatron-style (first projection by output features, second by input
// features), everything else follows its inputs.
static int mlp_policy(void *user, const loom_op_view *op, int parts, int *input, int *dim) {
    (void)user, (void)parts;
    int kn = !strcmp(op->signature, "loom.conv1d");  // GPT-2's [in, out] weights
    if (ends_with(op->module, "mlp.c_fc") || ends_with(op->module, "mlp.up_proj") ||
        ends_with(op->module, "mlp.gate_proj")) {
        *input = 1, *dim = kn ? 1 : 0;
        return 1;
    }
    if (ends_with(op->module, "mlp.c_proj") || ends_with(op->module, "mlp.down_proj")) {
        *input = 1, *dim = kn ? 0 : 1;
        return 1;
    }
    return -1;
}

static void expect_error(const char *name, loom_policy policy, int plan, int runtime,
                         loom_status want, const char *needle);

static void test_custom_policies(const char *name, const reference *ref, int n_layer) {
    g_policy_fn = mlp_policy;
    parity(name, ref, LOOM_POLICY_CUSTOM, 2, 2, no_zero);
    g_policy_fn = NULL;
    // The same decisions as a plan file, keyed by module path and op signature.
    char path[] = "/tmp/loom-test-plan-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) return;
    int gpt2 = !strcmp(name, "gpt2");
    fprintf(f, "{\"ops\": [");
    for (int l = 0; l < n_layer; l++) {
        if (gpt2)
            fprintf(f, "%s{\"module\": \"h.%d.mlp.c_fc\", \"op\": \"loom.conv1d\", \"split\": [1, 1]},"
                       "{\"module\": \"h.%d.mlp.c_proj\", \"op\": \"loom.conv1d\", \"split\": [1, 0]}",
                    l ? "," : "", l, l);
        else
            fprintf(f, "%s{\"module\": \"model.layers.%d.mlp.gate_proj\", \"op\": \"loom.linear\", "
                       "\"split\": [1, 0]}, {\"module\": \"model.layers.%d.mlp.up_proj\", "
                       "\"op\": \"loom.linear\", \"split\": [1, 0]}, {\"module\": "
                       "\"model.layers.%d.mlp.down_proj\", \"op\": \"loom.linear\", \"split\": [1, 1]}",
                    l ? "," : "", l, l, l);
    }
    // One more entry: GPT-2's first layer norm replicated; LLaMA has no such op, so for it the
    // file does not fit the model and must be refused naming the entry.
    fprintf(f, ", {\"module\": \"h.0.ln_1\", \"op\": \"loom.layer_norm\", \"split\": \"replicate\"}]}");
    fclose(f);
    g_plan_file = path;
    if (gpt2) parity(name, ref, LOOM_POLICY_FILE, 2, 2, no_zero);
    else expect_error(name, LOOM_POLICY_FILE, 2, 2, LOOM_ERR_INVALID, "matches no op");
    g_plan_file = NULL;
    unlink(path);
}

static void expect_error(const char *name, loom_policy policy, int plan, int runtime,
                         loom_status want, const char *needle) {
    loom_model_t m = load_oracle(name);
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = policy;
    cc.plan_ndevices = plan;
    cc.runtime_ndevices = runtime;
    cc.constraints = g_constraints;
    cc.plan_file = g_plan_file;
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st == want && p == NULL, "%s %s %d/%d: status %d, want %d", name,
              loom_policy_name(policy), plan, runtime, st, want);
    CHECK_MSG(strstr(loom_last_error(), needle) != NULL, "message '%s' lacks '%s'",
              loom_last_error(), needle);
    loom_parallel_free(p);
    loom_model_free(m);
}

static const char *gpt2_file_name(const char *name, char *buf, size_t cap) {
    return loom__family(LOOM_FAMILY_GPT2)->param_to_file(name, buf, cap);
}

static loom_parallel_t start(loom_model_t m, loom_policy policy, int plan, int runtime, int zero) {
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = policy;
    cc.plan_ndevices = plan;
    cc.runtime_ndevices = runtime;
    cc.use_zero = zero;
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    return p;
}

// Two steps under dp2 x tp2 with ZeRO, save sharded, merge; then resume on other plans (tp2;
// one device; 4-way data parallel from the sharded files directly): the third step's loss and
// the final parameters must be the single-device ones.
static void test_checkpoint_round_trip(const char *name, const reference *ref) {
    char tmp[] = "/tmp/loom-test-ckpt-XXXXXX", shards[600], merged[600];
    if (!mkdtemp(tmp)) return;
    snprintf(shards, sizeof shards, "%s/shards", tmp);
    snprintf(merged, sizeof merged, "%s/merged", tmp);
    loom_model_t m = load_oracle(name);
    loom_parallel_t p = start(m, LOOM_POLICY_TP, 2, 4, 1);
    for (int s = 0; p && s < 2; s++) CHECK_OK(loom_parallel_step(p, tokens, targets, NULL));
    if (p) CHECK_OK(loom_parallel_save_sharded(p, shards));
    loom_parallel_free(p);
    loom_model_free(m);
    CHECK_OK(loom_checkpoint_merge(shards, merged, !strcmp(name, "gpt2") ? gpt2_file_name : NULL));
    // The merged directory is a Hugging Face model directory too.
    loom_model_t hf = NULL;
    CHECK_OK(loom_model_load(merged, &hf));
    loom_model_free(hf);
    struct { const char *from; loom_policy policy; int plan, runtime; } resume[] = {
        {merged, LOOM_POLICY_TP, 2, 2}, {merged, LOOM_POLICY_DP, 1, 1},
        {shards, LOOM_POLICY_DP, 1, 4},
    };
    for (int k = 0; k < 3; k++) {
        m = load_oracle(name);
        p = start(m, resume[k].policy, resume[k].plan, resume[k].runtime, 0);
        if (!p) continue;
        CHECK_OK(loom_parallel_load_checkpoint(p, resume[k].from));
        loom_step_stats st;
        CHECK_OK(loom_parallel_step(p, tokens, targets, &st));
        CHECK_MSG(fabs(st.loss - ref->losses[2]) <= 1e-5 * fabs(ref->losses[2]),
                  "%s resumed from %s on %s %d/%d: loss %.7f vs %.7f", name, resume[k].from,
                  loom_policy_name(resume[k].policy), resume[k].plan, resume[k].runtime, st.loss,
                  ref->losses[2]);
        CHECK_OK(loom_parallel_sync_model(p));
        double worst = parity_params_error(m, ref, NULL);
        CHECK_MSG(worst < 1e-5, "%s resumed (case %d): parameters relative error %.3g", name, k,
                  worst);
        printf("%s: saved on tp 2/4 zero, resumed on %s %d/%d: loss %.7f, parameters %.1e\n",
               name, loom_policy_name(resume[k].policy), resume[k].plan, resume[k].runtime,
               st.loss, worst);
        loom_parallel_free(p);
        loom_model_free(m);
    }
    // A damaged shard is detected and named.
    char shard0[700];
    snprintf(shard0, sizeof shard0, "%s/shard-00000-of-00002.safetensors", shards);
    FILE *f = fopen(shard0, "r+b");
    if (f) {
        fseek(f, -5, SEEK_END);
        int c = fgetc(f);
        fseek(f, -5, SEEK_END);
        fputc(c ^ 0x5a, f);
        fclose(f);
    }
    m = load_oracle(name);
    p = start(m, LOOM_POLICY_DP, 1, 1, 0);
    loom_status st = p ? loom_parallel_load_checkpoint(p, shards) : LOOM_ERR_INTERNAL;
    CHECK_MSG(st == LOOM_ERR_FORMAT && strstr(loom_last_error(), "shard-00000-of-00002") &&
                  strstr(loom_last_error(), "damaged"),
              "damaged shard: status %d, '%s'", st, loom_last_error());
    loom_parallel_free(p);
    loom_model_free(m);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
}

// Targets ignored unevenly across ranks (most of the first rows) and gradient accumulation
// still give the single-device numbers: the loss is normalized by the kept targets of the whole
// batch, not averaged over per-rank means.
static void test_uneven_batches(void) {
    int32_t saved[B * T];
    memcpy(saved, targets, sizeof saved);
    for (int i = 0; i < 40; i++) targets[i] = -100;
    reference ref = {0};
    single_device("gpt2", &ref);
    parity("gpt2", &ref, LOOM_POLICY_DP, 1, 2, no_zero);
    parity("gpt2", &ref, LOOM_POLICY_DATA, 2, 2, no_zero);
    parity("gpt2", &ref, LOOM_POLICY_TP, 2, 4, no_zero);
    parity_reference_free(&ref);
    memcpy(targets, saved, sizeof saved);
    g_grad_accum = 2;  // 2 micro-batches of 2 rows
    single_device("llama", &ref);
    parity("llama", &ref, LOOM_POLICY_DP, 1, 2, no_zero);
    parity("llama", &ref, LOOM_POLICY_TP, 2, 2, (zero_opts){0, 1, 1, 0});
    parity_reference_free(&ref);
    g_grad_accum = 1;
}

// Bad data in one unit's rows is refused before any rank starts, naming it; the trainer stays
// usable (a rank failing mid-step would poison the communicators: see test-comm-*).
static void test_bad_batch(void) {
    loom_model_t m = load_oracle("gpt2");
    loom_parallel_t p = start(m, LOOM_POLICY_TP, 2, 4, 0);
    int32_t bad[B * T];
    memcpy(bad, targets, sizeof bad);
    bad[B * T - 1] = 1000;  // the last row belongs to the second unit
    loom_status st = p ? loom_parallel_step(p, tokens, bad, NULL) : LOOM_ERR_INTERNAL;
    CHECK_MSG(st == LOOM_ERR_INVALID && strstr(loom_last_error(), "target id 1000") &&
                  strstr(loom_last_error(), "position 63"),
              "bad batch: status %d, '%s'", st, loom_last_error());
    memcpy(bad, tokens, sizeof bad);
    bad[0] = 96;  // == vocabulary size: not a token
    st = p ? loom_parallel_step(p, bad, targets, NULL) : LOOM_ERR_INTERNAL;
    CHECK_MSG(st == LOOM_ERR_INVALID && strstr(loom_last_error(), "token id 96"),
              "token == vocab: status %d, '%s'", st, loom_last_error());
    if (p) CHECK_OK(loom_parallel_step(p, tokens, targets, NULL));
    loom_parallel_free(p);
    // The single-device trainer refuses it too (the embedding row V does not exist).
    loom_train_config tc = train_config();
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    st = loom_trainer_step(t, bad, targets, NULL);
    CHECK_MSG(st == LOOM_ERR_INVALID && strstr(loom_last_error(), "token id 96"),
              "single device, token == vocab: status %d, '%s'", st, loom_last_error());
    loom_trainer_free(t);
    loom_model_free(m);
}

// SGD without momentum keeps no optimizer state: resuming must still restore the step.
static void test_sgd_resume(void) {
    char tmp[] = "/tmp/loom-test-sgd-XXXXXX", dir[600];
    if (!mkdtemp(tmp)) return;
    snprintf(dir, sizeof dir, "%s/ckpt", tmp);
    loom_model_t m = load_oracle("gpt2");
    loom_compute_config cc = loom_compute_config_default();
    cc.runtime_ndevices = 2;
    loom_train_config tc = train_config();
    tc.optimizer = LOOM_OPTIM_SGD;
    tc.momentum = 0;
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    for (int s = 0; p && s < 2; s++) CHECK_OK(loom_parallel_step(p, tokens, targets, NULL));
    if (p) CHECK_OK(loom_parallel_save_sharded(p, dir));
    loom_parallel_free(p);
    p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    if (p) {
        CHECK_OK(loom_parallel_load_checkpoint(p, dir));
        CHECK_MSG(loom_parallel_steps_done(p) == 2, "SGD resume: step %lld",
                  (long long)loom_parallel_steps_done(p));
    }
    loom_parallel_free(p);
    loom_model_free(m);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
}

int main(void) {
    uint32_t s = 12345;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((s >> 8) % 96);
        targets[i] = (int32_t)((s >> 16) % 96);
    }
    test_bad_batch();
    test_uneven_batches();
    test_sgd_resume();
    const char *models[] = {"gpt2", "llama", "qwen2"};
    for (int i = 0; i < 3; i++) {
        reference ref = {0};
        single_device(models[i], &ref);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 2, no_zero);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 4, no_zero);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 2, (zero_opts){0, 1, 1, 1});
        g_loss_scale = 1024.0f;  // a power of two: scaling is exact, results must not move
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 4, (zero_opts){1, 1, 1, 0});
        g_loss_scale = 1.0f;
        g_recompute = "layers";  // recomputed comm ops and all: the same numbers
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 4, no_zero);
        g_recompute = NULL;
        parity(models[i], &ref, LOOM_POLICY_DATA, 2, 2, no_zero);
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 2, no_zero);
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 4, no_zero);
        parity(models[i], &ref, LOOM_POLICY_TP, 4, 4, no_zero);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 2, (zero_opts){1, 1, 1, 0});
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 2, (zero_opts){1, 1, 0, 0});
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 4, (zero_opts){1, 2, 1, 0});
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 4, (zero_opts){1, 2, 0, 0});
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 4, (zero_opts){1, 1, 1, 0});
        if (i < 2) test_checkpoint_round_trip(models[i], &ref);
        test_constraints(models[i], &ref);
        if (i < 2) test_custom_policies(models[i], &ref, 2);
        parity_reference_free(&ref);
    }
    // LLaMA fixture: 4 query heads in 2 kv groups; 8-way tensor parallelism splits nothing.
    expect_error("llama", LOOM_POLICY_TP, 8, 8, LOOM_ERR_SHAPE, "divides neither");
    // A batch of 4 does not split in 3; 3-way tensor parallelism divides no head count here.
    expect_error("gpt2", LOOM_POLICY_DATA, 3, 3, LOOM_ERR_SHAPE, "does not split into 3");
    expect_error("gpt2", LOOM_POLICY_TP, 3, 3, LOOM_ERR_SHAPE, "divides neither");
    expect_error("gpt2", LOOM_POLICY_TP, 2, 3, LOOM_ERR_INVALID, "multiple");
    // Constraint files: an op loom does not have; a constraint that leaves an op nothing.
    g_constraints = constraints("- name: torch.nn.functional.linear\n  parent_module: attn\n");
    expect_error("gpt2", LOOM_POLICY_TP, 2, 2, LOOM_ERR_INVALID, "torch.nn.functional.linear");
    loom_constraints_free(g_constraints);
    g_constraints = constraints("- name: loom.conv1d\n  parent_module: h.1.mlp.c_fc\n"
                                "  allowed_partition_dims: []\n  replica_allowed: false\n");
    expect_error("gpt2", LOOM_POLICY_TP, 2, 2, LOOM_ERR_INVALID, "h.1.mlp.c_fc");
    loom_constraints_free(g_constraints);
    // An input the op does not have (conv1d has 3) and a negative dim: never allowed, never
    // read out of bounds; replication remains.
    g_constraints = constraints("- name: loom.conv1d\n  allowed_partition_dims:\n  - 200,-1\n");
    reference ref = {0};
    single_device("gpt2", &ref);
    parity("gpt2", &ref, LOOM_POLICY_TP, 2, 2, no_zero);
    loom_constraints_free(g_constraints);
    g_constraints = NULL;
    // A plan file with one device per unit has nothing to split: it is not consulted.
    g_plan_file = "/nonexistent/plan.json";
    expect_error("gpt2", LOOM_POLICY_FILE, 2, 2, LOOM_ERR_IO, "/nonexistent/plan.json");
    char path[] = "/tmp/loom-test-plan1-XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) {
        const char *json = "{\"ops\": [{\"module\": \"h.0.mlp.c_fc\", \"op\": \"loom.conv1d\", "
                           "\"split\": [1, 1]}]}";
        if (write(fd, json, strlen(json)) < 0) perror("write");
        close(fd);
        g_plan_file = path;
        parity("gpt2", &ref, LOOM_POLICY_FILE, 1, 2, no_zero);
        unlink(path);
    }
    g_plan_file = NULL;
    parity_reference_free(&ref);
    return tu_finish();
}
