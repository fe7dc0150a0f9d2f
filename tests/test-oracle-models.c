// Oracle test: tiny GPT-2, LLaMA (GQA) and Qwen2 (q/k/v biases, tied head) loaded from Hugging
// Face files must reproduce PyTorch's logits, loss, every gradient, and the parameters after
// 3 AdamW steps (GPT-2 also: SGD, gradient accumulation). Fixtures: tests/oracle/.

#include "loom/safetensors.h"
#include "loom/train.h"
#include "models/family.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define B 2
#define T 16

typedef struct fixture {
    char dir[512];
    loom_weights_t expected;
    int32_t tokens[B * T], targets[B * T];
} fixture;

static float meta_float(fixture *fx, const char *key) {
    const char *s = loom_weights_metadata(fx->expected, key);
    if (!s) {
        fprintf(stderr, "fixture %s lacks metadata '%s'\n", fx->dir, key);
        exit(1);
    }
    return strtof(s, NULL);
}

// Read expected tensor `prefix` + file name of parameter `name` into a new buffer.
static float *expected_param(fixture *fx, loom_model_t m, const char *prefix, const char *name,
                             int64_t *numel) {
    const loom_family_i *fam = loom__family(loom_model_get_config(m)->family);
    char file_name[512], key[600];
    fam->param_to_file(name, file_name, sizeof file_name);
    snprintf(key, sizeof key, "%s%s", prefix, file_name);
    loom_tensor_info info;
    if (loom_weights_find(fx->expected, key, &info) < 0) {
        fprintf(stderr, "%s\n", loom_last_error());
        return NULL;
    }
    *numel = 1;
    for (int i = 0; i < info.ndim; i++) *numel *= info.shape[i];
    float *buf = malloc((size_t)*numel * sizeof(float));
    if (loom_weights_read_f32(fx->expected, key, info.ndim, info.shape, buf) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static float *expected(fixture *fx, const char *key, int64_t n) {
    float *buf = malloc((size_t)n * sizeof(float));
    loom_tensor_info info;
    CHECK_OK(loom_weights_find(fx->expected, key, &info));
    CHECK_OK(loom_weights_read_f32(fx->expected, key, info.ndim, info.shape, buf));
    return buf;
}

static loom_train_config fixture_train_config(fixture *fx, int grad_accum) {
    loom_train_config tc = loom_train_config_default();
    tc.batch = B / grad_accum;
    tc.seq = T;
    tc.grad_accum = grad_accum;
    tc.lr = meta_float(fx, "lr");
    tc.beta1 = meta_float(fx, "beta1");
    tc.beta2 = meta_float(fx, "beta2");
    tc.eps = meta_float(fx, "eps");
    tc.weight_decay = meta_float(fx, "weight_decay");
    tc.grad_clip = meta_float(fx, "clip");
    return tc;
}

// Compare every parameter gradient (prefix "grad." or "accum.grad.") at relative 1e-4.
static void check_grads(fixture *fx, loom_model_t m, loom_trainer_t t, const char *prefix) {
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const char *name = loom_model_tensor_name(m, i, NULL, NULL);
        int64_t n = 0, ng = 0;
        float *want = expected_param(fx, m, prefix, name, &n);
        const float *got = NULL;
        CHECK_OK(loom_trainer_grad(t, name, &got, &ng));
        if (!want || !got || n != ng) {
            CHECK_MSG(0, "%s: gradient of %s missing or wrong size", fx->dir, name);
            free(want);
            continue;
        }
        double err = tu_max_rel_err(got, want, (size_t)n, 1e-6);
        CHECK_MSG(err < 1e-4, "%s: %s%s relative error %.3g", fx->dir, prefix, name, err);
        free(want);
    }
}

static void check_params(fixture *fx, loom_model_t m, const char *prefix) {
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const char *name = loom_model_tensor_name(m, i, NULL, NULL);
        int64_t n = 0, ng = 0;
        float *want = expected_param(fx, m, prefix, name, &n);
        float *got = NULL;
        CHECK_OK(loom_model_tensor(m, name, &got, &ng));
        if (!want || n != ng) {
            CHECK_MSG(0, "%s: %s%s missing or wrong size", fx->dir, prefix, name);
            free(want);
            continue;
        }
        double err = tu_max_rel_err(got, want, (size_t)n, 1e-6);
        CHECK_MSG(err < 1e-5, "%s: %s%s relative error %.3g", fx->dir, prefix, name, err);
        free(want);
    }
}

static void test_forward_backward(fixture *fx) {
    loom_model_t m;
    CHECK_OK(loom_model_load(fx->dir, &m));
    const loom_model_config *cfg = loom_model_get_config(m);
    loom_train_config tc = fixture_train_config(fx, 1);
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    loom_step_stats s;
    CHECK_OK(loom_trainer_compute_grads(t, fx->tokens, fx->targets, &s));
    int64_t nlogits = (int64_t)B * T * cfg->vocab_size;
    float *logits = expected(fx, "logits", nlogits), *loss = expected(fx, "loss", 1);
    double err = tu_max_rel_err(loom_trainer_logits(t), logits, (size_t)nlogits, 1e-6);
    CHECK_MSG(err < 1e-5, "%s: logits relative error %.3g", fx->dir, err);
    CHECK_MSG(fabs(s.loss - loss[0]) <= 1e-5 * fabs(loss[0]), "%s: loss %.7f vs torch %.7f",
              fx->dir, s.loss, loss[0]);
    check_grads(fx, m, t, "grad.");
    printf("%s: loss %.6f (torch %.6f), logits rel err %.2g\n", fx->dir, s.loss, loss[0], err);
    free(logits), free(loss);
    loom_trainer_free(t);
    loom_model_free(m);
}

static void test_adamw(fixture *fx) {
    loom_model_t m;
    CHECK_OK(loom_model_load(fx->dir, &m));
    loom_train_config tc = fixture_train_config(fx, 1);
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    float *losses = expected(fx, "adamw.loss", 3), *norms = expected(fx, "adamw.grad_norm", 3);
    for (int step = 0; step < 3; step++) {
        loom_step_stats s;
        CHECK_OK(loom_trainer_step(t, fx->tokens, fx->targets, &s));
        CHECK_MSG(fabs(s.loss - losses[step]) <= 1e-5 * fabs(losses[step]),
                  "%s: AdamW step %d loss %.7f vs torch %.7f", fx->dir, step, s.loss,
                  losses[step]);
        CHECK_MSG(fabs(s.grad_norm - norms[step]) <= 1e-4 * fabs(norms[step]),
                  "%s: AdamW step %d grad norm %.7f vs torch %.7f", fx->dir, step, s.grad_norm,
                  norms[step]);
    }
    check_params(fx, m, "adamw.param.");
    free(losses), free(norms);
    loom_trainer_free(t);
    loom_model_free(m);
}

static void test_sgd(fixture *fx) {
    loom_model_t m;
    CHECK_OK(loom_model_load(fx->dir, &m));
    loom_train_config tc = fixture_train_config(fx, 1);
    tc.optimizer = LOOM_OPTIM_SGD;
    tc.lr = meta_float(fx, "sgd_lr");
    tc.momentum = meta_float(fx, "sgd_momentum");
    tc.weight_decay = meta_float(fx, "sgd_weight_decay");
    tc.grad_clip = 0;
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    float *losses = expected(fx, "sgd.loss", 3);
    for (int step = 0; step < 3; step++) {
        loom_step_stats s;
        CHECK_OK(loom_trainer_step(t, fx->tokens, fx->targets, &s));
        CHECK_MSG(fabs(s.loss - losses[step]) <= 1e-5 * fabs(losses[step]),
                  "%s: SGD step %d loss %.7f vs torch %.7f", fx->dir, step, s.loss, losses[step]);
    }
    check_params(fx, m, "sgd.param.");
    free(losses);
    loom_trainer_free(t);
    loom_model_free(m);
}

// Two micro-batches of one row each: gradients of the mean of the two micro-batch losses.
static void test_grad_accum(fixture *fx) {
    loom_model_t m;
    CHECK_OK(loom_model_load(fx->dir, &m));
    loom_train_config tc = fixture_train_config(fx, 2);
    loom_trainer_t t;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    loom_step_stats s;
    CHECK_OK(loom_trainer_compute_grads(t, fx->tokens, fx->targets, &s));
    float *loss = expected(fx, "accum.loss", 1);
    CHECK_MSG(fabs(s.loss - loss[0]) <= 1e-5 * fabs(loss[0]), "%s: accumulated loss %.7f vs "
              "torch %.7f", fx->dir, s.loss, loss[0]);
    check_grads(fx, m, t, "accum.grad.");
    free(loss);
    loom_trainer_free(t);
    loom_model_free(m);
}

static int open_fixture(fixture *fx, const char *name) {
    snprintf(fx->dir, sizeof fx->dir, "%s/oracle/%s", LOOM_TEST_DATA, name);
    char path[600];
    snprintf(path, sizeof path, "%s/expected.safetensors", fx->dir);
    if (loom_weights_open(path, &fx->expected) < 0) {
        fprintf(stderr, "%s\n", loom_last_error());
        return -1;
    }
    int64_t shape[2] = {B, T};
    if (loom_weights_read_i32(fx->expected, "tokens", 2, shape, fx->tokens) < 0 ||
        loom_weights_read_i32(fx->expected, "targets", 2, shape, fx->targets) < 0) {
        fprintf(stderr, "%s\n", loom_last_error());
        return -1;
    }
    return 0;
}

int main(void) {
    const char *models[] = {"gpt2", "llama", "qwen2"};
    for (int i = 0; i < 3; i++) {
        fixture fx;
        memset(&fx, 0, sizeof fx);
        if (open_fixture(&fx, models[i]) < 0) {
            CHECK_MSG(0, "cannot open fixture %s", models[i]);
            continue;
        }
        test_forward_backward(&fx);
        test_adamw(&fx);
        if (i == 0) {
            test_sgd(&fx);
            test_grad_accum(&fx);
        }
        loom_weights_close(fx.expected);
    }
    return tu_finish();
}
