// Autodist: the memory model against what the runtime allocates for the same plans on the CPU,
// the search's choices and limits, fixed settings, and its errors.

#include "autodist-testutil.h"
#include "parity.h"

#include "loom/autodist.h"
#include "loom/device.h"
#include "loom/parallel.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

// The plan autodist estimates for fixed settings, and the runtime's bytes for it: each
// pipeline rank's peak within `tol` (relative), category by category where they are exact.
static void check_memory(loom_family family, int tp, int pp, int dp, int micro_batch,
                         int batch, loom_recompute_mode recompute, int zero, loom_schedule sched,
                         double tol) {
    loom_model_config mc = small_model(family);
    loom_autodist_config ac = small_job(tp * pp * dp);
    ac.global_batch = batch;
    ac.tp = tp, ac.pp = pp, ac.dp = dp, ac.micro_batch = micro_batch;
    ac.recompute = recompute;
    ac.zero = zero;
    ac.schedule = sched;
    loom_autodist_t ad = NULL;
    CHECK_OK(loom_autodist_search(&mc, &ac, &ad));
    if (!ad) return;
    const loom_autodist_plan *p = loom_autodist_best(ad);
    CHECK(p->tp == tp && p->pp == pp && p->dp == dp && p->micro_batch == micro_batch);
    loom_model_t model = NULL;
    CHECK_OK(loom_model_create(&mc, 7, &model));
    loom_compute_config cc = loom_compute_config_default();
    loom_train_config tc = parity_train_config(batch, 32);
    loom_autodist_apply(p, &ac, &cc, &tc);
    loom_parallel_t par = NULL;
    CHECK_OK(loom_parallelize(model, &cc, &tc, &par));
    for (int r = 0; par && r < pp; r++) {
        loom_memory_stats got = loom_parallel_memory(par, r * tp);
        const loom_autodist_memory *want = &p->memory[r];
        size_t total = got.parameters + got.gradients + got.optimizer + got.activations +
                       got.inputs + got.buffers;
        double err = fabs((double)want->peak - (double)total) / (double)total;
        CHECK_MSG(err <= tol, "%s tp%d pp%d dp%d b%d rc=%s zero=%d %s rank %d: predicted %zu "
                  "bytes, runtime %zu (%.1f%%): params %zu/%zu grads %zu/%zu optim %zu/%zu "
                  "activ %zu/%zu inputs %zu/%zu buffers %zu/%zu",
                  mc.model_type, tp, pp, dp, micro_batch, loom_recompute_mode_name(recompute),
                  zero, loom_schedule_name(sched), r, want->peak, total, 100 * err,
                  want->bytes.parameters, got.parameters, want->bytes.gradients, got.gradients,
                  want->bytes.optimizer, got.optimizer, want->bytes.activations, got.activations,
                  want->bytes.inputs, got.inputs, want->bytes.buffers, got.buffers);
        // Parameters and gradients are counted exactly; optimizer state up to ZeRO's padding.
        CHECK(want->bytes.parameters == got.parameters);
        CHECK(want->bytes.gradients == got.gradients);
        CHECK(fabs((double)want->bytes.optimizer - (double)got.optimizer) <=
              0.01 * (double)got.optimizer + 1024);
    }
    loom_parallel_free(par);
    loom_model_free(model);
    loom_autodist_free(ad);
}

static void memory_model(void) {
    for (int f = 0; f < LOOM_FAMILY_COUNT; f++) {
        check_memory(f, 1, 1, 1, 4, 8, LOOM_RECOMPUTE_NONE, 0, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 1, 1, 1, 2, 8, LOOM_RECOMPUTE_FULL, 0, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 1, 1, 1, 2, 8, LOOM_RECOMPUTE_SELECTIVE, 0, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 1, 1, 2, 2, 8, LOOM_RECOMPUTE_NONE, 1, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 2, 1, 1, 4, 8, LOOM_RECOMPUTE_NONE, 0, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 1, 2, 1, 1, 4, LOOM_RECOMPUTE_NONE, 0, LOOM_SCHEDULE_1F1B, 0.02);
        check_memory(f, 1, 2, 1, 1, 8, LOOM_RECOMPUTE_NONE, 0, LOOM_SCHEDULE_GPIPE, 0.02);
        check_memory(f, 1, 2, 1, 1, 4, LOOM_RECOMPUTE_NONE, 0, LOOM_SCHEDULE_1F1B_INTERLEAVED,
                     0.02);
        // Recomputed clones' arena slots compose less exactly across stages.
        check_memory(f, 2, 2, 1, 2, 8, LOOM_RECOMPUTE_FULL, 0, LOOM_SCHEDULE_1F1B, 0.06);
    }
}

int main(void) {
    if (tu_scratch_make("autodist") != 0) {
        fprintf(stderr, "cannot create a scratch directory\n");
        return 1;
    }
    memory_model();
    tu_remove_tree(tu_scratch);
    return tu_finish();
}
