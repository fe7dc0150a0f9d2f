// Pipeline parity on the `mpi` communicator: MPI processes train tiny GPT-2 (wte tied to lm_head
// across the first and last stage) and LLaMA 3 AdamW steps: pp2 under 1f1b, gpipe with
// recomputed layers and 1f1b_interleaved (2 processes: one per device, as the mpi comm spans the
// whole world); pp4 with embeddings and head on their own stages, pp2 x tp2, pp2 x dp2 (1f1b and
// interleaved) on 4; pp2 x tp2 x dp2 on 8. Every process checks the eval (infer_pipe) loss and
// each step's loss against its own single-device run; rank 0 checks the merged parameters. Run
// without mpirun, the test starts itself under LOOM_MPIEXEC once per group (argv[1] names it;
// oversubscribed: CI machines have 2 cores) with small eager limits, so that pipelines, which
// send eagerly, also work when messages move only while their sender is in MPI; it skips (77)
// when MPI is absent. Also under mpi: train_step / infer_step with dummy micro-batches.

#include "loom/parallel.h"
#include "oracle-model.h"
#include "parity.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<mpi.h>)
#include <mpi.h>
#define HAVE_MPI_H 1
#endif
#endif

#define B 8
#define T 16
#define STEPS 3

static int32_t tokens[B * T], targets[B * T];

static loom_train_config train_config(void) { return parity_train_config(B, T); }

#ifdef HAVE_MPI_H
static int rank;

typedef struct pipe_case {
    int pp, tp, dp, micros;
    loom_schedule schedule;
    int chunks;
    const char *layers;     // NULL: balanced
    const char *recompute;  // NULL: none
} pipe_case;

typedef parity_reference reference;

static void parity(const char *name, const reference *ref, pipe_case c) {
    const float *ref_losses = ref->losses;
    char what[160];
    snprintf(what, sizeof what, "%s pp%d tp%d dp%d m%d %s chunks %d layers %s%s%s", name, c.pp,
             c.tp, c.dp, c.micros, loom_schedule_name(c.schedule), c.chunks ? c.chunks : 1,
             c.layers ? c.layers : "balanced", c.recompute ? " recompute " : "",
             c.recompute ? c.recompute : "");
    double t0 = MPI_Wtime();
    loom_model_t m = load_oracle(name);
    loom_compute_config cc = loom_compute_config_default();
    cc.comm = LOOM_COMM_MPI;
    cc.policy = c.tp > 1 ? LOOM_POLICY_HYBRID : LOOM_POLICY_PP;
    cc.plan_ndevices = c.pp * c.tp;
    cc.runtime_ndevices = c.pp * c.tp * c.dp;
    cc.pipeline_nstages = c.pp;
    cc.pipeline_nmicros = c.micros;
    cc.pipeline_scheduler = c.schedule;
    cc.pipeline_nchunks = c.chunks;
    cc.pipeline_layers = c.layers;
    cc.bucket_bytes = 4096;
    cc.timeout_s = 60;  // up to 8 processes on 2 cores
    loom_train_config tc = train_config();
    tc.recompute = c.recompute;
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &tc, &p);
    CHECK_MSG(st == 0, "%s (rank %d): %s", what, rank, loom_last_error());
    double worst_loss = 0;
    if (st == 0) {
        // Inference (infer_pipe) first: the forward-only loss is the first step's loss.
        float eval_loss = 0;
        st = loom_parallel_eval(p, tokens, targets, &eval_loss);
        CHECK_MSG(st == 0, "%s (rank %d): eval: %s", what, rank, loom_last_error());
        CHECK_MSG(st < 0 || fabs(eval_loss - ref_losses[0]) <= 1e-5 * fabs(ref_losses[0]),
                  "%s (rank %d): eval loss %.7f vs %.7f", what, rank, eval_loss, ref_losses[0]);
    }
    for (int s = 0; st == 0 && s < STEPS; s++) {
        loom_step_stats stats;
        st = loom_parallel_step(p, tokens, targets, &stats);
        CHECK_MSG(st == 0, "%s (rank %d): step %d: %s", what, rank, s, loom_last_error());
        if (st < 0) break;
        double err = fabs(stats.loss - ref_losses[s]) / fabs(ref_losses[s]);
        if (err > worst_loss) worst_loss = err;
        CHECK_MSG(err <= 1e-5, "%s (rank %d): step %d loss %.7f vs single device %.7f", what,
                  rank, s, stats.loss, ref_losses[s]);
        CHECK_MSG(fabs(stats.grad_norm - ref->norms[s]) <= 1e-5 * ref->norms[s],
                  "%s (rank %d): step %d gradient norm %.7f vs single device %.7f", what, rank,
                  s, stats.grad_norm, ref->norms[s]);
    }
    if (st == 0) {
        st = loom_parallel_sync_model(p);
        CHECK_MSG(st == 0, "%s (rank %d): sync: %s", what, rank, loom_last_error());
    }
    if (st == 0 && rank == 0) {
        const char *pname = "";
        double worst = parity_params_error(m, ref, &pname);
        CHECK_MSG(worst < 1e-5, "%s: merged parameter %s relative error %.3g", what, pname,
                  worst);
        printf("%-58s loss %.1e, parameters %.1e, %.2f s\n", what, worst_loss, worst,
               MPI_Wtime() - t0);
        fflush(stdout);
    }
    loom_parallel_free(p);
    loom_model_free(m);
}

static void single_device(const char *name, reference *ref) {
    loom_model_t m = load_oracle(name);
    loom_train_config tc = train_config();
    parity_reference_run(m, &tc, tokens, targets, STEPS, ref);
    loom_model_free(m);
}

// End-to-end steps with dummies: two samples under a 4-micro-batch pipeline (pp2 x dp) train
// as the single-device trainer on those two (grad_accum 2, one sample each); infer_step's
// per-sample losses equal train_step's.
static void dummies(int dp) {
    char what[64];
    snprintf(what, sizeof what, "gpt2 pp2 dp%d m4 train_step with 2 samples", dp);
    loom_model_t m = load_oracle("gpt2");
    loom_train_config tc = train_config();
    tc.batch = 2;
    tc.grad_accum = 2;
    reference ref;
    parity_reference_run(m, &tc, tokens, targets, 1, &ref);
    loom_model_free(m);
    m = load_oracle("gpt2");
    loom_compute_config cc = loom_compute_config_default();
    cc.comm = LOOM_COMM_MPI;
    cc.policy = LOOM_POLICY_PP;
    cc.plan_ndevices = cc.pipeline_nstages = 2;
    cc.runtime_ndevices = 2 * dp;
    cc.pipeline_nmicros = 4;
    cc.timeout_s = 60;
    loom_train_config ptc = train_config();
    ptc.batch = 8;  // 4 micro-batches of 2 sequences
    loom_parallel_t p = NULL;
    loom_status st = loom_parallelize(m, &cc, &ptc, &p);
    CHECK_MSG(st == 0, "%s (rank %d): %s", what, rank, loom_last_error());
    if (st == 0) {
        CHECK(loom_parallel_micro_batches(p) == 4 && loom_parallel_micro_rows(p) == 2);
        loom_sample samples[2] = {{tokens, targets}, {tokens + 2 * T, targets + 2 * T}};
        float losses[2] = {0, 0}, infer[2] = {0, 0};
        loom_step_stats stats = {0};
        CHECK_OK(loom_parallel_infer_step(p, samples, 2, infer));
        CHECK_OK(loom_parallel_train_step(p, samples, 2, losses, &stats));
        CHECK_MSG(fabs(stats.loss - ref.losses[0]) <= 1e-5 * fabs(ref.losses[0]),
                  "%s (rank %d): loss %.7f vs %.7f", what, rank, stats.loss, ref.losses[0]);
        CHECK_MSG(fabs(0.5f * (losses[0] + losses[1]) - stats.loss) <= 1e-5 * stats.loss,
                  "%s (rank %d): per-sample losses %.7f %.7f do not average to %.7f", what,
                  rank, losses[0], losses[1], stats.loss);
        for (int k = 0; k < 2; k++)
            CHECK_MSG(fabs(infer[k] - losses[k]) <= 1e-5 * losses[k],
                      "%s (rank %d): sample %d: infer_step %.7f vs train_step %.7f", what, rank,
                      k, infer[k], losses[k]);
        CHECK_OK(loom_parallel_sync_model(p));
    }
    if (st == 0 && rank == 0) {
        double worst = parity_params_error(m, &ref, NULL);
        CHECK_MSG(worst < 1e-5, "%s: merged parameters relative error %.3g", what, worst);
        printf("%-58s parameters %.1e\n", what, worst);
    }
    loom_parallel_free(p);
    loom_model_free(m);
    parity_reference_free(&ref);
}

static int run_under_mpi(int nproc) {
    MPI_Init(NULL, NULL);  // loom then leaves MPI to us (no finalize of its own)
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CHECK_MSG(size == nproc, "started with %d processes for the %d-rank group", size, nproc);
    const loom_schedule F = LOOM_SCHEDULE_1F1B, G = LOOM_SCHEDULE_GPIPE,
                        I = LOOM_SCHEDULE_1F1B_INTERLEAVED;
    const char *models[] = {"gpt2", "llama"};
    double t0 = MPI_Wtime();
    for (int i = 0; size == nproc && i < 2; i++) {
        reference ref;
        single_device(models[i], &ref);
        if (nproc == 2) {  // one pipeline: pp2 under every schedule
            parity(models[i], &ref, (pipe_case){2, 1, 1, 4, F, 1, NULL, NULL});
            parity(models[i], &ref, (pipe_case){2, 1, 1, 4, G, 1, NULL, "layers"});
            parity(models[i], &ref, (pipe_case){2, 1, 1, 4, I, 2, "0,1,1,0", NULL});
        } else if (nproc == 4) {
            parity(models[i], &ref, (pipe_case){4, 1, 1, 4, F, 1, "0,1,1,0", NULL});
            parity(models[i], &ref, (pipe_case){2, 2, 1, 2, F, 1, NULL, NULL});
            parity(models[i], &ref, (pipe_case){2, 1, 2, 2, F, 1, NULL, NULL});
            parity(models[i], &ref, (pipe_case){2, 1, 2, 2, I, 2, "0,1,1,0", NULL});
        } else {
            parity(models[i], &ref, (pipe_case){2, 2, 2, 2, F, 1, NULL, NULL});
            parity(models[i], &ref, (pipe_case){2, 2, 2, 2, G, 1, NULL, "layers"});
        }
        parity_reference_free(&ref);
    }
    if (size == nproc && nproc <= 4) dummies(nproc / 2);
    int mine[2] = {tu_passed, tu_failed}, all[2];
    MPI_Allreduce(mine, all, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    double seconds = MPI_Wtime() - t0;
    MPI_Finalize();
    if (rank == 0) printf("%d processes: %d passed, %d failed (%.1f s)\n", nproc, all[0], all[1],
                          seconds);
    return all[1] ? 1 : 0;
}

// Start `nproc` copies of this program under mpirun and wait for them: their exit status.
static int launch(const char *self, int nproc) {
    char np[8];
    snprintf(np, sizeof np, "%d", nproc);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 77;
    if (pid == 0) {
        execl(LOOM_MPIEXEC, LOOM_MPIEXEC, "-np", np, "--oversubscribe", self, np, (char *)NULL);
        fprintf(stderr, "cannot run %s: skipped\n", LOOM_MPIEXEC);
        _exit(77);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
#endif

int main(int argc, char **argv) {
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 37 + 11) % 96;
        targets[i] = (i % 13 == 5) ? -100 : (i * 53 + 7) % 96;
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
    // Under mpirun: argv[1] names the group (2, 4 or 8 processes).
    if (loom_comm_mpi_launched()) return run_under_mpi(argc > 1 ? atoi(argv[1]) : 4);
    // As root in CI containers; 8 processes on 2 cores.
    tu_mpi_environment();
    // Every message over 1 KB (boundary activations of 4 KB, parameters of 12 KB sent to rank 0
    // by sync_model) takes the rendezvous path, whose data moves only while the sender is inside
    // an MPI call: by default the tiny models' messages fit in the first 32 KB fragment.
    setenv("OMPI_MCA_btl_vader_eager_limit", "1024", 0);
    setenv("OMPI_MCA_btl_vader_rndv_eager_limit", "1024", 0);
    static const int groups[] = {2, 4, 8};
    int failed = 0, skipped = 0;
    for (int g = 0; g < 3; g++) {
        int rc = launch(argv[0], groups[g]);
        printf("%d processes: exit status %d\n", groups[g], rc);
        skipped += rc == 77;
        failed += rc != 0 && rc != 77;
    }
    return failed ? 1 : skipped == 3 ? 77 : 0;
#endif
}
