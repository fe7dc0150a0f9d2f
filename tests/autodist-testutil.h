// Test helpers for autodist: a CPU-kind device spec file whose op times come from a roofline
// (no timing on this machine) and the small models the plan tests search.

#ifndef LOOM_TEST_AUTODIST_TESTUTIL_H
#define LOOM_TEST_AUTODIST_TESTUTIL_H

#include "io-testutil.h"

#include "loom/autodist.h"
#include "loom/device.h"

// A CPU-kind device spec in the scratch directory: op times come from its roofline, memory is
// the CPU runtime's (kernel scratch included).
static inline const char *cpu_like_spec(void) {
    static char path[512];
    loom_device_spec s;
    CHECK_OK(loom_device_spec_builtin("a100-80gb-sxm", &s));
    snprintf(s.name, sizeof s.name, "test-cpu");
    s.kind = LOOM_DEVICE_CPU;
    s.devices_per_node = 8;
    snprintf(path, sizeof path, "%s", tu_path("test-cpu.json"));
    CHECK_OK(loom_device_spec_save(path, &s));
    return path;
}

// The family's small default with four layers.
static inline loom_model_config small_model(loom_family f) {
    loom_model_config c = loom_model_config_default(f);
    c.n_layer = 4;
    return c;
}

// An autodist config for `devices` devices on the CPU-kind spec, the roofline's op times, a
// global batch of 8 sequences of 32 tokens and no memory pressure.
static inline loom_autodist_config small_job(int devices) {
    loom_autodist_config ac = loom_autodist_config_default();
    ac.devices = devices;
    ac.device_spec = cpu_like_spec();
    ac.global_batch = 8;
    ac.seq = 32;
    ac.measured = 0;
    ac.mem_constraint = 1e12;
    return ac;
}

#endif // LOOM_TEST_AUTODIST_TESTUTIL_H
