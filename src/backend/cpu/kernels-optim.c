// Optimizer steps (AdamW, SGD with momentum) and the reductions around them (deterministic
// sum of squares for gradient-norm clipping, in-place scale). One threaded vectorized pass each.

#include "backend/cpu/kernels.h"

#include <math.h>
#include <stddef.h>

enum { PARALLEL_MIN_ELEMS = 1 << 15 };
// sum_squares splits x into this many contiguous parts, whatever the thread count.
enum { SUM_PARTS = 64 };

double loom_cpu_sum_squares(const float *x, int64_t n) {
    // Part p covers [n p / SUM_PARTS, n (p+1) / SUM_PARTS): fixed boundaries, each summed in
    // double by one fixed simd loop, then the parts in order: identical for any thread count.
    double part_sum[SUM_PARTS];
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int p = 0; p < SUM_PARTS; p++) {
        const int64_t i0 = n * p / SUM_PARTS, i1 = n * (p + 1) / SUM_PARTS;
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int64_t i = i0; i < i1; i++) sum += (double)x[i] * (double)x[i];
        part_sum[p] = sum;
    }
    double total = 0.0;
    for (int p = 0; p < SUM_PARTS; p++) total += part_sum[p];
    return total;
}

void loom_cpu_scale(float *x, float s, int64_t n) {
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

void loom_cpu_adamw_update(float *param, const float *grad, float *m, float *v, int64_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay,
                           int64_t t, float grad_scale) {
    // Scalars as torch forms them (Python doubles, cast to fp32 when applied to the tensors).
    const double bias_correction1 = 1.0 - pow((double)beta1, (double)t);
    const double bias_correction2 = 1.0 - pow((double)beta2, (double)t);
    const float step_size = (float)((double)lr / bias_correction1);
    const float bias_correction2_sqrt = (float)sqrt(bias_correction2);
    const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    const float one_minus_beta2 = (float)(1.0 - (double)beta2);
    // exp_avg.lerp_(grad, 1 - beta1) as ATen computes it: fma(coeff, grad - m, base), with
    // (coeff, base) = (w, m) for w < 0.5 and (w - 1, grad) otherwise.
    const float lerp_weight = (float)(1.0 - (double)beta1);
    const int lerp_small = fabsf(lerp_weight) < 0.5f;
    const float lerp_coeff = lerp_small ? lerp_weight : lerp_weight - 1.0f;

    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        const float g = grad[i] * grad_scale;
        const float p = param[i] * decay;                                 // param.mul_(1 - lr wd)
        const float mi = __builtin_fmaf(lerp_coeff, g - m[i], lerp_small ? m[i] : g);
        const float vi = v[i] * beta2 + one_minus_beta2 * g * g;          // mul_, addcmul_
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        param[i] = p - step_size * mi / denom;                            // addcdiv_(-step_size)
    }
}

void loom_cpu_sgd_update(float *param, const float *grad, float *buf, int64_t n, float lr,
                         float momentum, float weight_decay, int64_t t, float grad_scale) {
    // torch.optim.SGD: d_p = grad.add(param, alpha=wd); buf.mul_(momentum).add_(d_p);
    // param.add_(d_p or buf, alpha=-lr). ATen's add with alpha is one fma.
    const int use_momentum = momentum != 0.0f && buf != NULL;
    const int first_step = t <= 1;
    #pragma omp parallel for schedule(static) if (n > PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        float d = grad[i] * grad_scale;
        if (weight_decay != 0.0f) d = __builtin_fmaf(weight_decay, param[i], d);
        if (use_momentum) {
            d = first_step ? d : buf[i] * momentum + d;
            buf[i] = d;
        }
        param[i] = __builtin_fmaf(-lr, d, param[i]);
    }
}
