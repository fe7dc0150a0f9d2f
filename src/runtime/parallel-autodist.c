// The autodist policy of the parallel trainer: the plan search (loom/autodist.h) run for the
// devices, the memory limit and the batch of the job, then the plan it picks run as any other.

#include "runtime/parallel-impl.h"

#include "core/core.h"

#include <stdio.h>

// The search settings of a job: every degree open, the user's constraints kept.
static loom_autodist_config job_config(const loom_compute_config *cc,
                                       const loom_train_config *tc) {
    loom_autodist_config ac = loom_autodist_config_default();
    ac.devices = cc->runtime_ndevices;
    ac.device_spec = cc->device_spec;
    ac.mem_constraint = cc->mem_constraint;
    ac.global_batch = tc->batch * tc->grad_accum;
    ac.seq = tc->seq;
    ac.max_partition_degree = cc->max_partition_degree;
    ac.pipeline_pivots = cc->pipeline_pivots;
    ac.recompute_modules = cc->recompute_modules ? cc->recompute_modules : tc->recompute;
    ac.constraints = cc->constraints;
    ac.threads = tc->threads;
    if (cc->use_zero) ac.zero = 1;
    // Under MPI every process searches on its own: the roofline of the spec (the same file on
    // every node) makes them all pick the same plan, which measured times would not promise.
    if (cc->comm == LOOM_COMM_MPI) ac.measured = 0;
    return ac;
}

loom_status loom__parallelize_autodist(loom_model_t model, const loom_compute_config *cc,
                                       const loom_train_config *tc, loom_parallel_t *out) {
    *out = NULL;
    if (cc->runtime_ndevices < 1)
        return loom__error(LOOM_ERR_INVALID, "autodist: runtime_ndevices must be >= 1 (got %d)",
                           cc->runtime_ndevices);
    if (tc->batch < 1 || tc->grad_accum < 1)
        return loom__error(LOOM_ERR_INVALID, "autodist: batch (%d) and grad_accum (%d) must be "
                           ">= 1", tc->batch, tc->grad_accum);
    loom_autodist_config ac = job_config(cc, tc);
    loom_autodist_t ad = NULL;
    loom_status st = cc->load_plan_path
                         ? loom_autodist_load(cc->load_plan_path, loom_model_get_config(model),
                                              &ac, &ad)
                         : loom_autodist_search(loom_model_get_config(model), &ac, &ad);
    if (st < 0) {
        loom_autodist_free(ad);
        return st;
    }
    if (cc->save_plan_path && (st = loom_autodist_save(ad, cc->save_plan_path)) < 0) {
        loom_autodist_free(ad);
        return st;
    }
    loom_compute_config run = *cc;
    loom_train_config train = *tc;
    loom_autodist_apply(loom_autodist_best(ad), &ac, &run, &train);
    st = loom_parallelize(model, &run, &train, out);
    if (st < 0) {
        loom_autodist_free(ad);
        return st;
    }
    (*out)->autodist = ad;
    return LOOM_OK;
}
