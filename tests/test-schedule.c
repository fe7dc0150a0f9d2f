// Pipeline schedules: every schedule over 1..4 ranks, 1..3 chunks and 1..8 micro-batches runs
// each (virtual stage, micro-batch) forward and backward exactly once without deadlock under
// eager sends, reaches the bubble its analysis predicts in a unit-time simulation, holds the
// activations it should, and bad settings are refused naming the setting.

#include "core/core.h"
#include "lower/schedule.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#define MAX_RANKS 4
#define MAX_CHUNKS 3
#define MAX_MICROS 8
#define MAX_STAGES (MAX_RANKS * MAX_CHUNKS)

typedef struct sched {
    loom_schedule kind;
    int ranks, chunks, micros;
    loom_pipe_action *a[MAX_RANKS];
    int n[MAX_RANKS];
} sched;

static int valid(loom_schedule kind, int ranks, int chunks, int micros) {
    if (kind == LOOM_SCHEDULE_1F1B) return chunks == 1;
    if (kind == LOOM_SCHEDULE_1F1B_INTERLEAVED) return chunks >= 2 && micros % ranks == 0;
    return 1;
}

static int get(sched *s, loom_schedule kind, int ranks, int chunks, int micros) {
    memset(s, 0, sizeof *s);
    s->kind = kind, s->ranks = ranks, s->chunks = chunks, s->micros = micros;
    for (int r = 0; r < ranks; r++) {
        loom_status st = loom__schedule_actions(kind, ranks, chunks, micros, r, &s->a[r],
                                                &s->n[r]);
        CHECK_MSG(st == LOOM_OK, "%s ranks %d chunks %d micros %d rank %d: status %d %s",
                  loom_schedule_name(kind), ranks, chunks, micros, r, st, loom_last_error());
        if (st != LOOM_OK) return 0;
    }
    return 1;
}

static void put(sched *s) {
    for (int r = 0; r < s->ranks; r++) loom__free(s->a[r]);
}

#define FMT "%s ranks %d chunks %d micros %d"
#define ARGS(s) loom_schedule_name((s)->kind), (s)->ranks, (s)->chunks, (s)->micros

// Every (virtual stage, micro-batch) forward, and backward unless inferring, exactly once, and
// nothing out of range.
static int check_coverage(const sched *s) {
    int S = s->ranks * s->chunks, training = s->kind != LOOM_SCHEDULE_INFER_PIPE;
    int seen[2][MAX_STAGES][MAX_MICROS] = {{{0}}};
    int ok = 1;
    for (int r = 0; r < s->ranks; r++)
        for (int i = 0; i < s->n[r]; i++) {
            loom_pipe_action x = s->a[r][i];
            if (x.backward > 1 || x.chunk < 0 || x.chunk >= s->chunks || x.micro < 0 ||
                x.micro >= s->micros || (x.backward && !training)) {
                CHECK_MSG(0, FMT ": rank %d action %d (backward %d chunk %d micro %d) is not "
                          "one of the schedule's", ARGS(s), r, i, x.backward, x.chunk, x.micro);
                return 0;
            }
            seen[x.backward][x.chunk * s->ranks + r][x.micro]++;
        }
    for (int b = 0; b < 1 + training; b++)
        for (int st = 0; st < S; st++)
            for (int m = 0; m < s->micros; m++)
                if (seen[b][st][m] != 1) {
                    CHECK_MSG(0, FMT ": %s of stage %d micro %d runs %d times", ARGS(s),
                              b ? "backward" : "forward", st, m, seen[b][st][m]);
                    ok = 0;
                }
    CHECK(ok);
    return ok;
}

// Whether action x of rank r may run, given which (stage, micro) passes have finished.
static int ready(const sched *s, int r, loom_pipe_action x, int fdone[][MAX_MICROS],
                 int bdone[][MAX_MICROS]) {
    int S = s->ranks * s->chunks, st = x.chunk * s->ranks + r;
    if (!x.backward) return st == 0 || fdone[st - 1][x.micro];
    return fdone[st][x.micro] && (st == S - 1 || bdone[st + 1][x.micro]);
}

// Ranks with eager sends: repeatedly advance any rank whose next action is ready. Only a
// dependency cycle between the ranks' orders stops it early.
static void check_no_deadlock(const sched *s) {
    int fdone[MAX_STAGES][MAX_MICROS] = {{0}}, bdone[MAX_STAGES][MAX_MICROS] = {{0}};
    int pos[MAX_RANKS] = {0}, progress = 1;
    while (progress) {
        progress = 0;
        for (int r = 0; r < s->ranks; r++)
            while (pos[r] < s->n[r] && ready(s, r, s->a[r][pos[r]], fdone, bdone)) {
                loom_pipe_action x = s->a[r][pos[r]++];
                (x.backward ? bdone : fdone)[x.chunk * s->ranks + r][x.micro] = 1;
                progress = 1;
            }
    }
    for (int r = 0; r < s->ranks; r++)
        if (pos[r] < s->n[r]) {
            loom_pipe_action x = s->a[r][pos[r]];
            CHECK_MSG(0, FMT ": deadlock, rank %d stuck at action %d of %d (%s chunk %d micro "
                      "%d)", ARGS(s), r, pos[r], s->n[r], x.backward ? "backward" : "forward",
                      x.chunk, x.micro);
            return;
        }
    CHECK(1);
}

// Lock-step time: at each tick every idle rank starts its next action if the passes it needs
// have finished by then; a forward takes fd ticks, a backward bd. Returns the makespan, or -1
// when the ranks stall (every rank idle, none ready: only a deadlock does that).
static int makespan(const sched *s, int fd, int bd) {
    int fend[MAX_STAGES][MAX_MICROS], bend[MAX_STAGES][MAX_MICROS];
    int fdone[MAX_STAGES][MAX_MICROS], bdone[MAX_STAGES][MAX_MICROS];
    int pos[MAX_RANKS] = {0}, busy[MAX_RANKS] = {0}, left = 0, end = 0;
    for (int st = 0; st < MAX_STAGES; st++)
        for (int m = 0; m < MAX_MICROS; m++) fend[st][m] = bend[st][m] = -1;
    for (int r = 0; r < s->ranks; r++) left += s->n[r];
    for (int t = 0; left; t++) {
        // Finished by tick t: an end time at or before t.
        for (int st = 0; st < MAX_STAGES; st++)
            for (int m = 0; m < MAX_MICROS; m++) {
                fdone[st][m] = fend[st][m] >= 0 && fend[st][m] <= t;
                bdone[st][m] = bend[st][m] >= 0 && bend[st][m] <= t;
            }
        int active = 0;
        for (int r = 0; r < s->ranks; r++) {
            if (busy[r] > t) {
                active = 1;
                continue;
            }
            if (pos[r] == s->n[r] || !ready(s, r, s->a[r][pos[r]], fdone, bdone)) continue;
            loom_pipe_action x = s->a[r][pos[r]++];
            int st = x.chunk * s->ranks + r, e = t + (x.backward ? bd : fd);
            (x.backward ? bend : fend)[st][x.micro] = e;
            busy[r] = e;
            end = e > end ? e : end;
            left--;
            active = 1;
        }
        if (!active) return -1;
    }
    return end;
}

static int min_i(int a, int b) { return a < b ? a : b; }
static int max_i(int a, int b) { return a > b ? a : b; }

// Makespans, forward 1 tick and backward 2 per (chunk, micro-batch) pass, p ranks, v chunks,
// M micro-batches.
//
// A lower bound for any order on this placement: the last rank's first pass needs micro-batch
// m through virtual stages 0..p-2 first (>= p-1 ticks); it then has 3vM ticks of its own work;
// its last pass is a backward of some stage >= p-1, which the backwards of all the stages
// below it (>= p-1 of them, 2 ticks each) follow. So makespan >= 3(vM + p - 1): p - 1 forward
// and p - 1 backward slots of bubble, Megatron's (p-1)(tf+tb)/v measured in chunk passes.
//
// gpipe and 1f1b with one chunk reach it: 3(M + p - 1). Interleaved 1f1b reaches it too:
// 3(vM + p - 1). gpipe (and infer_pipe) with v chunks reach it when M >= p; with M < p rank 0
// finishes chunk c's M forwards before micro-batch 0 is back from the last rank (p ticks after
// it started chunk c), so each of the v - 1 chunk changes waits p - M ticks forward and 2(p-M)
// backward: 3(vM + p - 1) + 3(v-1)(p-M) = 3(v·max(M,p) + min(M,p) - 1), which covers both
// cases; forwards alone take v·max(M,p) + min(M,p) - 1.
//
// Against 1f1b, a rank running the same layers as one stage does v chunks' work per pass
// (forward v ticks, backward 2v): by the bound above 3v(M + p - 1), which exceeds the
// interleaved 3(vM + p - 1) by 3(v-1)(p-1): strictly more whenever p >= 2 and v >= 2.
static void check_makespan(const sched *s) {
    int p = s->ranks, v = s->chunks, M = s->micros;
    int got = makespan(s, 1, 2), want;
    switch (s->kind) {
    case LOOM_SCHEDULE_1F1B:
        want = 3 * (M + p - 1);
        break;
    case LOOM_SCHEDULE_GPIPE:
        want = 3 * (v * max_i(M, p) + min_i(M, p) - 1);
        break;
    case LOOM_SCHEDULE_1F1B_INTERLEAVED:
        want = 3 * (v * M + p - 1);
        break;
    default:
        want = v * max_i(M, p) + min_i(M, p) - 1;
        break;
    }
    CHECK_MSG(got == want, FMT ": makespan %d ticks, expected %d", ARGS(s), got, want);
    if (s->kind != LOOM_SCHEDULE_1F1B_INTERLEAVED || p < 2) return;
    sched plain;
    if (!get(&plain, LOOM_SCHEDULE_1F1B, p, 1, M)) return;
    int one = makespan(&plain, v, 2 * v);
    CHECK_MSG(one == 3 * v * (M + p - 1), "1f1b ranks %d micros %d, a pass %d chunks' work: "
              "makespan %d, expected %d", p, M, v, one, 3 * v * (M + p - 1));
    CHECK_MSG(got < one, FMT ": interleaved makespan %d is not below 1f1b's %d", ARGS(s), got,
              one);
    put(&plain);
}

// Activations held: 1f1b rank r warms up with min(p-r-1, M) forwards and then holds one more
// until the steady state's backward; gpipe and infer_pipe hold every forward (nothing frees
// them before the backwards; infer_pipe has none); interleaved rank r holds its warm-up plus
// the first steady forward, min(w_r + 1, vM).
static void check_in_flight(const sched *s) {
    int p = s->ranks, v = s->chunks, M = s->micros;
    for (int r = 0; r < p; r++) {
        int got = loom__schedule_max_in_flight(s->a[r], s->n[r]), want;
        if (s->kind == LOOM_SCHEDULE_1F1B) {
            want = min_i(p - r, M);
        } else if (s->kind == LOOM_SCHEDULE_1F1B_INTERLEAVED) {
            int w = min_i((p - r - 1) * 2 + (v - 1) * p, v * M);
            want = min_i(w + 1, v * M);
            if (r == 0)
                CHECK_MSG(got <= w + 1, FMT ": rank 0 holds %d, above warm-up %d + 1", ARGS(s),
                          got, w);
        } else {
            want = M * v;
        }
        CHECK_MSG(got == want, FMT ": rank %d holds %d activations, expected %d", ARGS(s), r,
                  got, want);
    }
}

static void sweep(void) {
    int runs = 0;
    for (int k = 0; k < LOOM_SCHEDULE_COUNT; k++)
        for (int p = 1; p <= MAX_RANKS; p++)
            for (int v = 1; v <= MAX_CHUNKS; v++)
                for (int M = 1; M <= MAX_MICROS; M++) {
                    if (!valid((loom_schedule)k, p, v, M)) {
                        loom_pipe_action *a = (loom_pipe_action *)1;
                        int n = 7;
                        loom_status st = loom__schedule_actions((loom_schedule)k, p, v, M, 0,
                                                                &a, &n);
                        CHECK_MSG(st == LOOM_ERR_INVALID && !a && !n, "%s ranks %d chunks %d "
                                  "micros %d: status %d, expected refusal",
                                  loom_schedule_name((loom_schedule)k), p, v, M, st);
                        continue;
                    }
                    sched s;
                    if (!get(&s, (loom_schedule)k, p, v, M)) continue;
                    if (check_coverage(&s)) {
                        check_no_deadlock(&s);
                        check_makespan(&s);
                        check_in_flight(&s);
                    }
                    put(&s);
                    runs++;
                }
    printf("%d schedules simulated\n", runs);
}

// Exact orders worked out by hand, so the sweep's properties are not met by some other order.
static void check_order(loom_schedule kind, int ranks, int chunks, int micros, int rank,
                        const char *want) {
    loom_pipe_action *a = NULL;
    int n = 0;
    CHECK_OK(loom__schedule_actions(kind, ranks, chunks, micros, rank, &a, &n));
    char got[512] = "";
    size_t len = 0;
    for (int i = 0; i < n && len < sizeof got - 16; i++)
        len += (size_t)snprintf(got + len, sizeof got - len, "%s%c%d.%d", i ? " " : "",
                                a[i].backward ? 'B' : 'F', a[i].chunk, a[i].micro);
    CHECK_MSG(!strcmp(got, want), "%s ranks %d chunks %d micros %d rank %d:\n  got  %s\n  want %s",
              loom_schedule_name(kind), ranks, chunks, micros, rank, got, want);
    loom__free(a);
}

static void orders(void) {
    // 1f1b, rank 1 of 4: warm-up 2 forwards, 3 forward/backward pairs, 2 cool-down backwards.
    check_order(LOOM_SCHEDULE_1F1B, 4, 1, 5, 1,
                "F0.0 F0.1 F0.2 B0.0 F0.3 B0.1 F0.4 B0.2 B0.3 B0.4");
    check_order(LOOM_SCHEDULE_1F1B, 4, 1, 2, 0, "F0.0 F0.1 B0.0 B0.1");
    check_order(LOOM_SCHEDULE_GPIPE, 2, 2, 2, 1, "F0.0 F0.1 F1.0 F1.1 B1.0 B1.1 B0.0 B0.1");
    check_order(LOOM_SCHEDULE_INFER_PIPE, 3, 2, 2, 2, "F0.0 F0.1 F1.0 F1.1");
    // Interleaved, 2 ranks, 2 chunks, 4 micro-batches: groups of 2 micro-batches go through
    // chunk 0 then chunk 1 (backwards chunk 1 then 0). Rank 0 warms up with 2*1 + 1*2 = 4
    // forwards, rank 1 with 0 + 2 = 2.
    check_order(LOOM_SCHEDULE_1F1B_INTERLEAVED, 2, 2, 4, 0,
                "F0.0 F0.1 F1.0 F1.1 F0.2 B1.0 F0.3 B1.1 F1.2 B0.0 F1.3 B0.1 "
                "B1.2 B1.3 B0.2 B0.3");
    check_order(LOOM_SCHEDULE_1F1B_INTERLEAVED, 2, 2, 4, 1,
                "F0.0 F0.1 F1.0 B1.0 F1.1 B1.1 F0.2 B0.0 F0.3 B0.1 F1.2 B1.2 F1.3 B1.3 "
                "B0.2 B0.3");
}

static void in_flight_counts(void) {
    loom_pipe_action a[] = {{0, 0, 0}, {0, 1, 0}, {1, 1, 0}, {0, 0, 1},
                            {0, 1, 1}, {1, 1, 1}, {1, 0, 0}, {1, 0, 1}};
    CHECK(loom__schedule_max_in_flight(a, 8) == 3);
    CHECK(loom__schedule_max_in_flight(a, 2) == 2);
    CHECK(loom__schedule_max_in_flight(a, 0) == 0);
}

static void names(void) {
    const char *want[] = {"1f1b", "gpipe", "1f1b_interleaved", "infer_pipe"};
    CHECK(LOOM_SCHEDULE_COUNT == 4);
    for (int i = 0; i < LOOM_SCHEDULE_COUNT; i++) {
        CHECK_MSG(!strcmp(loom_schedule_name((loom_schedule)i), want[i]), "schedule %d: '%s'",
                  i, loom_schedule_name((loom_schedule)i));
        CHECK(loom_schedule_from_name(want[i]) == i);
    }
    CHECK(!strcmp(loom_schedule_name(LOOM_SCHEDULE_COUNT), "?"));
    CHECK(!strcmp(loom_schedule_name((loom_schedule)-1), "?"));
    CHECK(loom_schedule_from_name("1F1B") == -1);
    CHECK(loom_schedule_from_name("interleaved") == -1);
    CHECK(loom_schedule_from_name("") == -1);
}

// A refused setting: LOOM_ERR_INVALID, no actions, and a message naming each of `words`.
static void refused(loom_schedule kind, int ranks, int chunks, int micros, int rank,
                    const char *w1, const char *w2) {
    loom_pipe_action *a = (loom_pipe_action *)1;
    int n = 7;
    loom_status st = loom__schedule_actions(kind, ranks, chunks, micros, rank, &a, &n);
    const char *msg = loom_last_error();
    CHECK_MSG(st == LOOM_ERR_INVALID && !a && !n && strstr(msg, w1) && (!w2 || strstr(msg, w2)),
              "%d ranks %d chunks %d micros %d rank %d: status %d '%s' (want '%s'%s%s)",
              (int)kind, ranks, chunks, micros, rank, st, msg, w1, w2 ? ", " : "", w2 ? w2 : "");
}

static void errors(void) {
    refused(LOOM_SCHEDULE_1F1B, 2, 2, 4, 0, "pipeline_nchunks", "1f1b_interleaved");
    refused(LOOM_SCHEDULE_1F1B_INTERLEAVED, 2, 1, 4, 0, "pipeline_nchunks", "2");
    refused(LOOM_SCHEDULE_1F1B_INTERLEAVED, 2, 2, 3, 0, "pipeline_nmicros", "pipeline_nstages");
    refused(LOOM_SCHEDULE_1F1B_INTERLEAVED, 4, 2, 6, 0, "pipeline_nmicros", "4 or 8");
    refused(LOOM_SCHEDULE_GPIPE, 0, 1, 4, 0, "pipeline_nstages", NULL);
    refused(LOOM_SCHEDULE_GPIPE, 2, 0, 4, 0, "pipeline_nchunks", NULL);
    refused(LOOM_SCHEDULE_1F1B, 2, 1, 0, 0, "pipeline_nmicros", NULL);
    refused(LOOM_SCHEDULE_INFER_PIPE, 2, 1, -3, 0, "pipeline_nmicros", NULL);
    refused(LOOM_SCHEDULE_1F1B, 4, 1, 4, 4, "rank 4", "pipeline_nstages");
    refused(LOOM_SCHEDULE_1F1B, 4, 1, 4, -1, "rank -1", "pipeline_nstages");
    refused(LOOM_SCHEDULE_COUNT, 2, 1, 4, 0, "pipeline_scheduler", "1f1b");
    refused(LOOM_SCHEDULE_GPIPE, 2, 40000, 4, 0, "pipeline_nchunks", NULL);
}

int main(void) {
    names();
    in_flight_counts();
    orders();
    errors();
    sweep();
    return tu_finish();
}
