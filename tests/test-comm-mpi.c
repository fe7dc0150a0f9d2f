// Tests of the MPI communicator on 4 processes. Started plainly, it re-runs itself under
// `LOOM_MPIEXEC -np 4 --oversubscribe` (skips when loom has no MPI); under MPI it runs the
// collective and point-to-point checks of test-comm-local.c (eager sends in both directions
// included), then a timeout and an abort, and rank 0 prints the pass/fail totals of all ranks.

#define LOOM_COMM_TEST_SHARED_ONLY
#include "test-comm-local.c"

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<mpi.h>)
#include <mpi.h>
#define TEST_HAS_MPI_H 1
#endif
#endif

enum { MPI_RANKS = 4 };
#define RELAUNCH_LIMIT_S 120.0

// ---- outside MPI: run this program under mpirun ------------------------------------------------

static int relaunch_under_mpi(void) {
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "test-comm-mpi: cannot read /proc/self/exe\n");
        return 1;
    }
    self[len] = '\0';
    pid_t pid = fork();
    if (pid < 0) {
        perror("test-comm-mpi: fork");
        return 1;
    }
    if (pid == 0) {
        setpgid(0, 0);  // one group, so a hung run can be killed whole
        tu_mpi_environment();
        execl(LOOM_MPIEXEC, LOOM_MPIEXEC, "-np", "4", "--oversubscribe", self, (char *)NULL);
        perror("test-comm-mpi: exec " LOOM_MPIEXEC);
        _exit(127);
    }
    double deadline = now_s() + RELAUNCH_LIMIT_S;
    int status = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        if (done < 0) {
            perror("test-comm-mpi: waitpid");
            return 1;
        }
        if (now_s() > deadline) {
            fprintf(stderr, "test-comm-mpi: mpirun still running after %.0f s; killed\n",
                    RELAUNCH_LIMIT_S);
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 1;
        }
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? 0 : 1;
    fprintf(stderr, "test-comm-mpi: mpirun ended by signal %d\n",
            WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    return 1;
}

// ---- under MPI ----------------------------------------------------------------------------------

// Mismatched point-to-point lengths fail on the receiver (sends are eager, so the sender does
// not learn of it) and leave the communicator usable.
static void test_length_mismatch(loom_comm_t world) {
    int r = loom_comm_rank(world);
    int32_t buf[16] = {0};
    if (r == 0) {
        RCHECK_OK(loom_comm_send(world, buf, 8, LOOM_DTYPE_I32, 1, 7), r);
        RCHECK_OK(loom_comm_send(world, buf, 8, LOOM_DTYPE_I32, 1, 8), r);
    } else if (r == 1) {
        loom_status st = loom_comm_recv(world, buf, 4, LOOM_DTYPE_I32, 0, 7);
        RCHECK(st == LOOM_ERR_INVALID && has(loom_last_error(), "sent more than the 16 bytes"),
               "longer message: %d '%s'", st, loom_last_error());
        st = loom_comm_recv(world, buf, 16, LOOM_DTYPE_I32, 0, 8);
        RCHECK(st == LOOM_ERR_INVALID && has(loom_last_error(), "expected 64 bytes but rank 0 "
                                                                "sent 32"),
               "shorter message: %d '%s'", st, loom_last_error());
    }
    RCHECK_OK(loom_comm_barrier(world), r);
}

// Rank 0 sends a message past MPI's eager limit on a fresh communicator and destroys it at once;
// rank 1 receives it 200 ms later: the destroy waits for the send in flight, and its staging
// copy outlives the sender's buffer.
static void test_destroy_after_send(loom_comm_t world) {
    int r = loom_comm_rank(world);
    loom_comm_t s = NULL;
    RCHECK_OK(loom_comm_mpi_create(NULL, NULL, &s), r);
    size_t count = (size_t)1 << 18;
    int32_t *buf = malloc(count * sizeof *buf);
    if (s && r == 0) {
        fill_i32(buf, count, r, 0, 600);
        RCHECK_OK(loom_comm_send(s, buf, count, LOOM_DTYPE_I32, 1, 9), r);
        memset(buf, 0xa5, count * sizeof *buf);
    } else if (s && r == 1) {
        struct timespec pause = {0, 200 * 1000 * 1000};
        nanosleep(&pause, NULL);
        RCHECK_OK(loom_comm_recv(s, buf, count, LOOM_DTYPE_I32, 0, 9), r);
        size_t bad = 0;
        for (size_t i = 0; i < count; i++) bad += buf[i] != i32_value(0, i, 600);
        RCHECK(bad == 0, "rank 1: %zu elements of the message sent before destroy differ", bad);
    }
    loom_comm_destroy(s);
    free(buf);
    RCHECK_OK(loom_comm_barrier(world), r);
}

// A communicator over an MPI communicator the caller passes (MPI_COMM_WORLD here).
static void test_given_communicator(loom_comm_t world) {
#ifdef TEST_HAS_MPI_H
    int r = loom_comm_rank(world);
    MPI_Comm mpi_world = MPI_COMM_WORLD;
    loom_comm_t c = NULL;
    RCHECK_OK(loom_comm_mpi_create(&mpi_world, NULL, &c), r);
    RCHECK(c && loom_comm_rank(c) == r && loom_comm_size(c) == MPI_RANKS, "rank %d: given", r);
    int32_t one = 1, total = 0;
    RCHECK_OK(loom_comm_all_reduce(c, &one, &total, 1, LOOM_DTYPE_I32, LOOM_REDUCE_SUM), r);
    RCHECK(total == MPI_RANKS, "rank %d: sum over the given communicator %d", r, total);
    loom_comm_destroy(c);
#endif
}

// Rank 3 skips a barrier on a fresh 1 s-timeout communicator: ranks 0-2 fail with
// LOOM_ERR_COMM within ~3 s; then all meet on `world` and destroy the failed communicator.
static void test_timeout(loom_comm_t world) {
    int r = loom_comm_rank(world);
    loom_comm_config quick = {.timeout_s = 1.0};
    loom_comm_t t = NULL;
    RCHECK_OK(loom_comm_mpi_create(NULL, &quick, &t), r);
    if (t && r != 3) {
        double t0 = now_s();
        loom_status st = loom_comm_barrier(t);
        double waited = now_s() - t0;
        RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "barrier #1") &&
                   has(loom_last_error(), "rank 3 did not arrive within 1.0 s"),
               "rank %d: status %d '%s'", r, st, loom_last_error());
        RCHECK(waited < 3.0, "rank %d: timeout reported after %.2f s", r, waited);
        t0 = now_s();
        int32_t x = 1;
        st = loom_comm_all_reduce(t, &x, &x, 1, LOOM_DTYPE_I32, LOOM_REDUCE_SUM);
        RCHECK(st == LOOM_ERR_COMM && now_s() - t0 < 0.5,
               "rank %d: a later call must fail at once: %d '%s'", r, st, loom_last_error());
    }
    RCHECK_OK(loom_comm_barrier(world), r);
    loom_comm_destroy(t);
}

// Rank 2 aborts on a fresh communicator (rank_abort). An abort poisons every loom MPI
// communicator of its process, so `world` fails on every rank afterwards too.
static void test_abort(loom_comm_t world) {
    int r = loom_comm_rank(world);
    loom_comm_config cfg = {.timeout_s = 30.0};
    loom_comm_t a = NULL;
    RCHECK_OK(loom_comm_mpi_create(NULL, &cfg, &a), r);
    if (!a) return;
    rank_abort(a, NULL);
    double t0 = now_s();
    loom_status st = loom_comm_barrier(world);
    RCHECK(st == LOOM_ERR_COMM && has(loom_last_error(), "rank 2 failed: test failure"),
           "rank %d: world after the abort: %d '%s'", r, st, loom_last_error());
    RCHECK(now_s() - t0 < 5.0, "rank %d: world failure took %.2f s", r, now_s() - t0);
    loom_comm_destroy(a);
}

static int under_mpi(void) {
    exact_rank_order = 0;
    loom_comm_config cfg = {.timeout_s = 30.0};
    loom_comm_t world = NULL;
    if (loom_comm_mpi_create(NULL, &cfg, &world) != LOOM_OK) {
        fprintf(stderr, "test-comm-mpi: %s\n", loom_last_error());
        return 1;
    }
    int r = loom_comm_rank(world), n = loom_comm_size(world);
    RCHECK(n == MPI_RANKS, "rank %d: %d ranks, want %d", r, n, MPI_RANKS);
    RCHECK(loom_comm_get_kind(world) == LOOM_COMM_MPI, "kind");
    RCHECK(loom_comm_mpi_launched() && loom_comm_mpi_available(), "launched and available");
    double t0 = now_s();

    rank_all_reduce(world, NULL);
    rank_reduce_scatter(world, NULL);
    rank_all_gather(world, NULL);
    rank_all_to_all(world, NULL);
    rank_broadcast(world, NULL);
    rank_barrier_waits(world, NULL);
    rank_ring(world, NULL);
    rank_both_ways(world, NULL);
    rank_queued(world, NULL);
    rank_split(world, NULL);
    rank_async(world, NULL);
    rank_count_zero(world, NULL);
    test_given_communicator(world);
    test_length_mismatch(world);
    test_destroy_after_send(world);
    test_timeout(world);
    test_abort(world);

    // Totals over ranks, on a fresh communicator (the abort poisoned the others).
    loom_comm_t tally = NULL;
    int32_t counts[2] = {tu_passed, tu_failed};
    int status = 1;
    if (loom_comm_mpi_create(NULL, &cfg, &tally) == LOOM_OK &&
        loom_comm_all_reduce(tally, counts, counts, 2, LOOM_DTYPE_I32, LOOM_REDUCE_SUM) ==
            LOOM_OK) {
        if (r == 0) {
            fprintf(stderr, "test-comm-mpi: %d ranks, %.1f s\n", n, now_s() - t0);
            printf("%d passed, %d failed\n", counts[0], counts[1]);
        }
        status = counts[1] ? 1 : 0;
    } else {
        fprintf(stderr, "test-comm-mpi rank %d: gathering the totals: %s\n", r,
                loom_last_error());
    }
    loom_comm_destroy(world);
    loom_comm_destroy(tally);  // the last loom MPI communicator: MPI_Finalize
    return status;
}

int main(void) {
    if (!loom_comm_mpi_available() || LOOM_MPIEXEC[0] == '\0') {
        printf("skipped: loom was built without MPI or no mpirun was found\n");
        return 77;
    }
    return loom_comm_mpi_launched() ? under_mpi() : relaunch_under_mpi();
}
