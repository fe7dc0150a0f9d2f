// Test helper: load one of the PyTorch oracle model directories (tests/data/oracle/NAME).

#ifndef LOOM_TEST_ORACLE_MODEL_H
#define LOOM_TEST_ORACLE_MODEL_H

#include "loom/model.h"
#include "testutil.h"

static inline loom_model_t load_oracle(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/oracle/%s", LOOM_TEST_DATA, name);
    loom_model_t m = NULL;
    CHECK_OK(loom_model_load(dir, &m));
    return m;
}

#endif // LOOM_TEST_ORACLE_MODEL_H
