// Test helper for parity tests: the single-device reference a parallel run must reproduce (its
// losses, gradient norms and final parameters) and the comparison of parameters with it.

#ifndef LOOM_TEST_PARITY_H
#define LOOM_TEST_PARITY_H

#include "loom/model.h"
#include "loom/parallel.h"
#include "loom/train.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define PARITY_MAX_STEPS 8

typedef struct parity_reference {
    float losses[PARITY_MAX_STEPS], norms[PARITY_MAX_STEPS];
    int n;             // parameters
    float **params;    // their values after the steps
    int64_t *numel;
} parity_reference;

// The optimizer settings every parity test uses: a high learning rate so three steps move the
// parameters visibly, clipping, and AdamW eps 1e-3 (with torch's 1e-8 an element whose gradient
// is ~0 moves by +-lr on the sign of round-off, which no two reduction orders share; see
// tests/oracle/README.md).
static inline loom_train_config parity_train_config(int batch, int seq) {
    loom_train_config tc = loom_train_config_default();
    tc.batch = batch;
    tc.seq = seq;
    tc.lr = 1e-2f;
    tc.weight_decay = 0.1f;
    tc.grad_clip = 1.0f;
    tc.eps = 1e-3f;
    tc.threads = 1;
    return tc;
}

// Train m on one device for `steps` steps and keep what the parallel runs must reproduce.
static inline void parity_reference_run(loom_model_t m, const loom_train_config *tc,
                                        const int32_t *tokens, const int32_t *targets, int steps,
                                        parity_reference *ref) {
    memset(ref, 0, sizeof *ref);
    loom_trainer_t t = NULL;
    CHECK_OK(loom_trainer_create(m, tc, &t));
    for (int s = 0; t && s < steps && s < PARITY_MAX_STEPS; s++) {
        loom_step_stats st;
        CHECK_OK(loom_trainer_step(t, tokens, targets, &st));
        ref->losses[s] = st.loss;
        ref->norms[s] = st.grad_norm;
    }
    loom_trainer_free(t);
    ref->n = loom_model_n_tensors(m);
    ref->params = calloc((size_t)ref->n, sizeof(float *));
    ref->numel = calloc((size_t)ref->n, sizeof(int64_t));
    for (int i = 0; i < ref->n; i++) {
        float *data;
        loom_model_tensor(m, loom_model_tensor_name(m, i, NULL, NULL), &data, &ref->numel[i]);
        ref->params[i] = malloc((size_t)ref->numel[i] * sizeof(float));
        memcpy(ref->params[i], data, (size_t)ref->numel[i] * sizeof(float));
    }
}

static inline void parity_reference_free(parity_reference *ref) {
    for (int i = 0; i < ref->n; i++) free(ref->params[i]);
    free(ref->params);
    free(ref->numel);
    memset(ref, 0, sizeof *ref);
}

// The largest relative error (floor 1e-6) of m's parameters against the reference's; *worst_name
// (may be NULL) names the parameter.
static inline double parity_params_error(loom_model_t m, const parity_reference *ref,
                                         const char **worst_name) {
    double worst = 0;
    int at = -1;
    for (int i = 0; i < ref->n; i++) {
        float *data;
        int64_t n;
        loom_model_tensor(m, loom_model_tensor_name(m, i, NULL, NULL), &data, &n);
        double err = tu_max_rel_err(data, ref->params[i], (size_t)n, 1e-6);
        if (at < 0 || err > worst) worst = err, at = i;
    }
    if (worst_name) *worst_name = at >= 0 ? loom_model_tensor_name(m, at, NULL, NULL) : "";
    return worst;
}

// Run `steps` steps of p on one batch, each loss within relative 1e-5 of the reference's, then
// merge the parameters into m and compare them (relative 1e-5). The worst errors come back.
static inline void parity_steps(loom_parallel_t p, loom_model_t m, const parity_reference *ref,
                                const int32_t *tokens, const int32_t *targets, int steps,
                                const char *what, double *worst_loss, double *worst_param) {
    *worst_loss = 0;
    for (int s = 0; s < steps; s++) {
        loom_step_stats stats;
        CHECK_OK(loom_parallel_step(p, tokens, targets, &stats));
        double err = fabs(stats.loss - ref->losses[s]) / fabs(ref->losses[s]);
        if (err > *worst_loss) *worst_loss = err;
        CHECK_MSG(err < 1e-5, "%s: step %d loss %.7f vs single device %.7f", what, s, stats.loss,
                  ref->losses[s]);
    }
    CHECK_OK(loom_parallel_sync_model(p));
    const char *pname = "";
    *worst_param = parity_params_error(m, ref, &pname);
    CHECK_MSG(*worst_param < 1e-5, "%s: parameter %s relative error %.3g", what, pname,
              *worst_param);
}

#endif // LOOM_TEST_PARITY_H
