// Timelines: a traced 2-way tensor-parallel step writes Chrome trace-event JSON with one track
// per rank, every instruction (kernels, collectives, optimizer) in time order, and idle gaps.

#include "loom/parallel.h"
#include "testutil.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define B 4
#define T 16

static int32_t tokens[B * T], targets[B * T];

// Check the events of `path`: per rank (tid < ranks), names and time order.
static void check_trace(const char *path, int ranks, int want_comm) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    CHECK_MSG(root != NULL, "%s: not JSON (%s)", path, err.text);
    json_t *events = json_object_get(root, "traceEvents");
    CHECK(json_is_array(events));
    int named[8] = {0}, comm[8] = {0}, optimizer[8] = {0}, kernels[8] = {0}, ordered = 1, bad = 0;
    double last_end[8];
    for (int r = 0; r < 8; r++) last_end[r] = -1;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e) {
        const char *ph = json_string_value(json_object_get(e, "ph"));
        const char *name = json_string_value(json_object_get(e, "name"));
        json_int_t tid = json_integer_value(json_object_get(e, "tid"));
        if (!ph || !name || tid < 0 || tid >= ranks) {
            bad++;
            continue;
        }
        if (!strcmp(ph, "M")) {
            named[tid] = !strcmp(name, "thread_name");
            continue;
        }
        double ts = json_number_value(json_object_get(e, "ts"));
        double dur = json_number_value(json_object_get(e, "dur"));
        if (dur < 0 || ts < last_end[tid] - 0.5) ordered = 0;  // 0.5 us of rounding
        last_end[tid] = ts + dur;
        const char *cat = json_string_value(json_object_get(e, "cat"));
        comm[tid] += cat && !strcmp(cat, "comm");
        kernels[tid] += cat && (!strcmp(cat, "forward") || !strcmp(cat, "backward"));
        optimizer[tid] += !strcmp(name, "optimizer_step");
    }
    CHECK_MSG(bad == 0, "%s: %d malformed events", path, bad);
    CHECK_MSG(ordered, "%s: a track's events overlap or go back in time", path);
    for (int r = 0; r < ranks; r++) {
        CHECK_MSG(named[r] && kernels[r] > 10 && optimizer[r] == 1,
                  "%s: rank %d: named %d, %d kernels, %d optimizer steps", path, r, named[r],
                  kernels[r], optimizer[r]);
        CHECK_MSG(!want_comm || comm[r] > 0, "%s: rank %d has no collective", path, r);
    }
    json_decref(root);
}

int main(void) {
    for (int i = 0; i < B * T; i++) tokens[i] = i % 96, targets[i] = (i * 7) % 96;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/oracle/gpt2", LOOM_TEST_DATA);
    loom_model_t m;
    CHECK_OK(loom_model_load(dir, &m));
    loom_train_config tc = loom_train_config_default();
    tc.batch = B;
    tc.seq = T;
    tc.trace = 1;
    tc.threads = 1;
    char path[] = "/tmp/loom-test-trace-XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    // Two ranks, tensor parallel: collectives on both tracks.
    loom_compute_config cc = loom_compute_config_default();
    cc.policy = LOOM_POLICY_TP;
    cc.plan_ndevices = cc.runtime_ndevices = 2;
    loom_parallel_t p = NULL;
    CHECK_OK(loom_parallelize(m, &cc, &tc, &p));
    if (p) {
        CHECK_OK(loom_parallel_step(p, tokens, targets, NULL));
        CHECK_OK(loom_parallel_write_trace(p, path));
        check_trace(path, 2, 1);
        loom_parallel_free(p);
    }
    // One device.
    loom_trainer_t t = NULL;
    CHECK_OK(loom_trainer_create(m, &tc, &t));
    if (t) {
        CHECK_OK(loom_trainer_step(t, tokens, targets, NULL));
        CHECK_OK(loom_trainer_write_trace(t, path));
        check_trace(path, 1, 0);
        loom_trainer_free(t);
    }
    unlink(path);
    loom_model_free(m);
    return tu_finish();
}
