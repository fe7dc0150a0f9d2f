// The autodist policy of the parallel trainer: the plan search (loom/autodist.h) run for the
// devices, the memory limit and the batch of the job, then the plan it picks run as any other.
// Under MPI rank 0 searches (with op times measured on its node) and sends the plan to the rest.

#include "runtime/parallel-impl.h"

#include "core/core.h"
#include "cost/autodist-impl.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// How long the other MPI processes wait for rank 0's search (measuring ops on a cold cache takes
// minutes for large models); a rank that dies still fails them at once through mpirun.
#define SEARCH_TIMEOUT_S 1800.0

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
    ac.threads = loom__threads_per_rank(cc, tc);
    if (cc->use_zero) ac.zero = 1;
    return ac;
}

// Search the plan, or load it from load_plan_path; save it to save_plan_path when asked.
static loom_status find_plan(loom_model_t model, const loom_compute_config *cc,
                             const loom_autodist_config *ac, loom_autodist_t *ad) {
    const loom_model_config *mc = loom_model_get_config(model);
    loom_status st = cc->load_plan_path ? loom_autodist_load(cc->load_plan_path, mc, ac, ad)
                                        : loom_autodist_search(mc, ac, ad);
    if (st == 0 && cc->save_plan_path) st = loom_autodist_save(*ad, cc->save_plan_path);
    if (st < 0) {
        loom_autodist_free(*ad);
        *ad = NULL;
    }
    return st;
}

// Under MPI: rank 0 finds the plan (searching with measured op times, or loading the plan file,
// which then need only exist on its node) and broadcasts it as plan-file text, or its error;
// every other process reads the plan from that text (estimated by the roofline: the settings
// are rank 0's, only the predictions it prints differ). *comm stays open until the caller has
// created the run's own communicators, so that MPI is not finalized in between.
static loom_status find_plan_mpi(loom_model_t model, const loom_compute_config *cc,
                                 loom_autodist_config *ac, loom_comm_t *comm,
                                 loom_autodist_t *ad) {
    loom_comm_config ccfg = loom_comm_config_default();
    ccfg.timeout_s = cc->timeout_s > SEARCH_TIMEOUT_S ? cc->timeout_s : SEARCH_TIMEOUT_S;
    LOOM_CHECK(loom_comm_mpi_create(NULL, &ccfg, comm));
    int rank = loom_comm_rank(*comm);
    char *text = NULL;
    int32_t head[2] = {0, 0};  // rank 0's status, then the length of its text (with the NUL)
    if (rank == 0) {
        loom_status st = find_plan(model, cc, ac, ad);
        if (st == 0) st = loom__autodist_plan_text(*ad, &text);
        const char *said = st < 0 ? loom_last_error() : text;
        size_t len = strlen(said) + 1;
        head[0] = st;
        head[1] = len < INT32_MAX - 4 ? (int32_t)len : 0;
        if (st < 0) text = strdup(said);
        if (!text || !head[1]) head[0] = LOOM_ERR_NOMEM, head[1] = 1;
    }
    loom_status st = loom_comm_broadcast(*comm, head, head, 2, LOOM_DTYPE_I32, 0);
    if (st < 0) return free(text), st;
    size_t words = ((size_t)head[1] + 3) / 4;
    char *buf = calloc(words, 4);
    if (rank == 0 && buf && text) memcpy(buf, text, (size_t)head[1]);
    free(text);
    if (!buf) return loom__error(LOOM_ERR_NOMEM, "autodist: out of memory for the plan text");
    st = loom_comm_broadcast(*comm, buf, buf, words, LOOM_DTYPE_I32, 0);
    buf[words * 4 - 1] = '\0';
    if (st == 0 && head[0] < 0 && rank != 0)
        st = loom__error(head[0], "rank 0: %s", buf);
    else if (st == 0 && head[0] < 0)
        st = head[0];  // rank 0 keeps its own message
    else if (st == 0 && rank != 0) {
        ac->measured = 0;
        st = loom__autodist_load_text(buf, "the plan of rank 0", loom_model_get_config(model), ac,
                                      ad);
    }
    free(buf);
    return st;
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
    loom_comm_t search_comm = NULL;
    loom_status st = cc->comm == LOOM_COMM_MPI ? find_plan_mpi(model, cc, &ac, &search_comm, &ad)
                                               : find_plan(model, cc, &ac, &ad);
    if (st == 0) {
        loom_compute_config run = *cc;
        loom_train_config train = *tc;
        loom_autodist_apply(loom_autodist_best(ad), &ac, &run, &train);
        st = loom_parallelize(model, &run, &train, out);
    }
    loom_comm_destroy(search_comm);
    if (st < 0) {
        loom_autodist_free(ad);
        return st;
    }
    (*out)->autodist = ad;
    return LOOM_OK;
}
