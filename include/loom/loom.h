// loom: parallel transformer training and inference in C. Umbrella header.

#ifndef LOOM_LOOM_H
#define LOOM_LOOM_H

#include "loom/autodist.h"
#include "loom/checkpoint.h"
#include "loom/comm.h"
#include "loom/constraints.h"
#include "loom/data.h"
#include "loom/device.h"
#include "loom/dtype.h"
#include "loom/exec.h"
#include "loom/graph.h"
#include "loom/model.h"
#include "loom/parallel.h"
#include "loom/safetensors.h"
#include "loom/status.h"
#include "loom/train.h"

#define LOOM_VERSION_STRING "0.1.0"

#endif // LOOM_LOOM_H
