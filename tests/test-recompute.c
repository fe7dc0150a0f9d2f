// Recomputation: recomputing every layer, the attention modules, or the MLPs during the backward
// gives bit-identical losses, gradients and updated parameters, with a smaller activation arena;
// a spec naming no module is refused.

#include "loom/train.h"
#include "oracle-model.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define B 2
#define T 16

static int32_t tokens[B * T], targets[B * T];

typedef struct run {
    float loss;
    size_t activations;
    int n;
    float **grads, **params;
} run;

// Gradients of one batch, then parameters after two AdamW steps.
static void train(const char *name, const char *recompute, run *out) {
    loom_model_t m = load_oracle(name);
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.lr = 1e-2f;
    tc.recompute = recompute;
    loom_trainer_t t = NULL;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    memset(out, 0, sizeof *out);
    if (!t) return loom_model_free(m);
    loom_step_stats s;
    CHECK_OK(loom_trainer_compute_grads(t, tokens, targets, &s));
    out->loss = s.loss;
    out->activations = loom_trainer_memory(t).activations;
    out->n = loom_model_n_tensors(m);
    out->grads = calloc((size_t)out->n, sizeof(float *));
    out->params = calloc((size_t)out->n, sizeof(float *));
    for (int i = 0; i < out->n; i++) {
        const float *g;
        int64_t n;
        CHECK_OK(loom_trainer_grad(t, loom_model_tensor_name(m, i, NULL, NULL), &g, &n));
        out->grads[i] = malloc((size_t)n * sizeof(float));
        memcpy(out->grads[i], g, (size_t)n * sizeof(float));
    }
    for (int k = 0; k < 2; k++) CHECK_OK(loom_trainer_step(t, tokens, targets, &s));
    for (int i = 0; i < out->n; i++) {
        float *p;
        int64_t n;
        loom_model_tensor(m, loom_model_tensor_name(m, i, NULL, NULL), &p, &n);
        out->params[i] = malloc((size_t)n * sizeof(float));
        memcpy(out->params[i], p, (size_t)n * sizeof(float));
    }
    loom_trainer_free(t);
    loom_model_free(m);
}

static void run_free(run *r) {
    for (int i = 0; i < r->n; i++) free(r->grads[i]), free(r->params[i]);
    free(r->grads), free(r->params);
}

static void compare(const char *name, const char *spec, const run *ref, const run *got) {
    loom_model_t m = load_oracle(name);
    CHECK_MSG(memcmp(&ref->loss, &got->loss, sizeof(float)) == 0, "%s recompute %s: loss %.9g vs "
              "%.9g", name, spec, got->loss, ref->loss);
    int same_grads = got->n == ref->n, same_params = got->n == ref->n;
    for (int i = 0; i < ref->n && i < got->n; i++) {
        int64_t n;
        float *unused;
        loom_model_tensor(m, loom_model_tensor_name(m, i, NULL, NULL), &unused, &n);
        same_grads &= !memcmp(ref->grads[i], got->grads[i], (size_t)n * sizeof(float));
        same_params &= !memcmp(ref->params[i], got->params[i], (size_t)n * sizeof(float));
    }
    CHECK_MSG(same_grads, "%s recompute %s: gradients differ", name, spec);
    CHECK_MSG(same_params, "%s recompute %s: parameters after 2 steps differ", name, spec);
    CHECK_MSG(got->activations < ref->activations, "%s recompute %s: activations %zu, not below "
              "%zu", name, spec, got->activations, ref->activations);
    printf("%s, recompute %-10s activations %zu -> %zu bytes, bit-identical\n", name, spec,
           ref->activations, got->activations);
    loom_model_free(m);
}

int main(void) {
    uint32_t s = 99;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((s >> 8) % 96);
        targets[i] = (int32_t)((s >> 16) % 96);
    }
    const char *models[] = {"gpt2", "llama"};
    const char *specs[2][2] = {{"layers", "attn,mlp"}, {"layers", "self_attn"}};
    for (int i = 0; i < 2; i++) {
        run ref, got;
        train(models[i], NULL, &ref);
        for (int k = 0; k < 2; k++) {
            train(models[i], specs[i][k], &got);
            compare(models[i], specs[i][k], &ref, &got);
            run_free(&got);
        }
        run_free(&ref);
    }
    loom_model_t m = load_oracle("gpt2");
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.recompute = "decoder";
    loom_trainer_t t = NULL;
    loom_status st = loom_trainer_create(m, &tc, &t);
    CHECK_MSG(st == LOOM_ERR_INVALID && t == NULL && strstr(loom_last_error(), "decoder"),
              "bad recompute spec: status %d '%s'", st, loom_last_error());
    loom_model_free(m);
    return tu_finish();
}
