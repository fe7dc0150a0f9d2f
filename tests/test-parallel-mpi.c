// Parallel parity on the `mpi` communicator: 4 processes under mpirun train tiny GPT-2 and LLaMA
// 3 AdamW steps under dp4, dp2 x tp2, tp4, data2 x dp2, dp4 with ZeRO (2 groups) and the plan
// autodist picks (rank 0 searches with measured op times and sends the plan: every process must
// run the same one, and a memory limit nothing fits fails every process with rank 0's reason);
// every rank checks the losses against its own single-device run and rank 0 checks the merged
// parameters. Run without mpirun, the test starts itself under LOOM_MPIEXEC; it skips (77) when
// MPI is absent.

#include "loom/autodist.h"
#include "loom/parallel.h"
#include "oracle-model.h"
#include "parity.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<mpi.h>)
#include <mpi.h>
#define HAVE_MPI_H 1
#endif
#endif

#define NPROC 4
#define B 4
#define T 16
#define STEPS 3

static int32_t tokens[B * T], targets[B * T];

static loom_train_config train_config(void) { return parity_train_config(B, T); }

#ifdef HAVE_MPI_H
static int rank;

// The settings every process must agree on, and the layout as a hash.
static void plan_signature(const loom_autodist_plan *b, long sig[10]) {
    unsigned long h = 5381;  // djb2, wrapping
    for (const char *c = b->layout ? b->layout : ""; *c; c++) h = h * 33 + (unsigned char)*c;
    for (const char *c = b->pipeline_layers ? b->pipeline_layers : ""; *c; c++)
        h = h * 33 + (unsigned char)*c;
    long v[10] = {b->tp, b->pp, b->dp, b->chunks, b->micro_batch, b->num_micro_batches,
                  (long)b->schedule, (long)b->recompute, b->zero, (long)(h % 1000003)};
    memcpy(sig, v, sizeof v);
}

static void parity(const char *name, const parity_reference *ref, loom_policy policy, int plan,
                   int zero_groups) {
    const float *ref_losses = ref->losses;
    loom_model_t m = load_oracle(name);
    loom_compute_config cc = loom_compute_config_default();
    cc.comm = LOOM_COMM_MPI;
    cc.policy = policy;
    cc.plan_ndevices = plan;
    cc.runtime_ndevices = NPROC;
    cc.use_zero = zero_groups > 0;
    cc.zero_ngroups = zero_groups > 0 ? zero_groups : 1;
    cc.timeout_s = 60;
    cc.bucket_bytes = 4096;
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    char what[96];
    snprintf(what, sizeof what, "%s %s plan %d of %d%s (rank %d)", name, loom_policy_name(policy),
             plan, NPROC, zero_groups ? " zero" : "", rank);
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st == 0, "%s: %s", what, loom_last_error());
    if (st == 0 && policy == LOOM_POLICY_AUTODIST) {
        long sig[10], lo[10], hi[10];
        loom_autodist_t ad = loom_parallel_autodist(p);
        int64_t searched = loom_autodist_plans_evaluated(ad);
        CHECK_MSG(rank == 0 ? searched > 0 : searched == 0, "%s: %lld plans evaluated", what,
                  (long long)searched);
        plan_signature(loom_autodist_best(ad), sig);
        MPI_Allreduce(sig, lo, 10, MPI_LONG, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(sig, hi, 10, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
        CHECK_MSG(!memcmp(lo, hi, sizeof lo), "%s: the processes run different plans", what);
        if (rank == 0) printf("%s: tp %ld pp %ld dp %ld micro-batch %ld x %ld\n", what, sig[0],
                              sig[1], sig[2], sig[4], sig[5]);
    }
    for (int s = 0; st == 0 && s < STEPS; s++) {
        loom_step_stats stats;
        CHECK_OK(loom_parallel_step(p, tokens, targets, &stats));
        CHECK_MSG(fabs(stats.loss - ref_losses[s]) <= 1e-5 * fabs(ref_losses[s]),
                  "%s: step %d loss %.7f vs %.7f", what, s, stats.loss, ref_losses[s]);
    }
    if (st == 0) CHECK_OK(loom_parallel_sync_model(p));
    if (st == 0 && rank == 0) {
        double worst = parity_params_error(m, ref, NULL);
        CHECK_MSG(worst < 1e-5, "%s: merged parameters relative error %.3g", what, worst);
        printf("%-40s parameters %.1e\n", what, worst);
    }
    loom_parallel_free(p);
    loom_model_free(m);
}

// A memory limit no plan fits: every process fails, the others with rank 0's reason.
static void autodist_no_fit(void) {
    loom_model_t m = load_oracle("gpt2");
    loom_compute_config cc = loom_compute_config_default();
    cc.comm = LOOM_COMM_MPI;
    cc.policy = LOOM_POLICY_AUTODIST;
    cc.runtime_ndevices = NPROC;
    cc.mem_constraint = 1000;
    cc.timeout_s = 60;
    loom_train_config tc = train_config();
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    const char *msg = loom_last_error();
    CHECK_MSG(st == LOOM_ERR_NOMEM && strstr(msg, "smallest"), "rank %d: %d %s", rank, st, msg);
    if (rank != 0) CHECK_MSG(strstr(msg, "rank 0: autodist"), "rank %d: %s", rank, msg);
    loom_parallel_free(p);
    loom_model_free(m);
}

static int run_under_mpi(void) {
    MPI_Init(NULL, NULL);  // loom then leaves MPI to us (no finalize of its own)
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *models[] = {"gpt2", "llama"};
    for (int i = 0; i < 2; i++) {
        loom_model_t m = load_oracle(models[i]);
        loom_train_config tc = train_config();
        parity_reference ref;
        parity_reference_run(m, &tc, tokens, targets, STEPS, &ref);
        loom_model_free(m);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 0);
        parity(models[i], &ref, LOOM_POLICY_TP, 2, 0);
        parity(models[i], &ref, LOOM_POLICY_DATA, 2, 0);
        parity(models[i], &ref, LOOM_POLICY_DP, 1, 2);
        parity(models[i], &ref, LOOM_POLICY_TP, 4, 0);
        parity(models[i], &ref, LOOM_POLICY_AUTODIST, 0, 0);
        parity_reference_free(&ref);
    }
    autodist_no_fit();
    int mine[2] = {tu_passed, tu_failed}, all[2];
    MPI_Allreduce(mine, all, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Finalize();
    if (rank == 0) printf("%d passed, %d failed\n", all[0], all[1]);
    return all[1] ? 1 : 0;
}
#endif

int main(int argc, char **argv) {
    uint32_t s = 4242;
    for (int i = 0; i < B * T; i++) {
        s = s * 1664525u + 1013904223u;
        tokens[i] = (int32_t)((s >> 8) % 96);
        targets[i] = (int32_t)((s >> 16) % 96);
    }
#ifndef HAVE_MPI_H
    (void)argc, (void)argv;
    printf("built without MPI headers: skipped\n");
    return 77;
#else
    if (!loom_comm_mpi_available() || !LOOM_MPIEXEC[0]) {
        printf("loom has no MPI support or mpirun is missing: skipped\n");
        return 77;
    }
    if (loom_comm_mpi_launched()) return run_under_mpi();
    // Start NPROC copies of this program under mpirun (as root in CI containers).
    tu_mpi_environment();
    char np[8];
    snprintf(np, sizeof np, "%d", NPROC);
    fflush(stdout);
    execl(LOOM_MPIEXEC, LOOM_MPIEXEC, "-np", np, "--oversubscribe", argv[0], (char *)NULL);
    fprintf(stderr, "cannot run %s: skipped\n", LOOM_MPIEXEC);
    (void)argc;
    return 77;
#endif
}
