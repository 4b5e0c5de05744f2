// Fused TSGB steps for the CuPy executor (tsgb_onnx/backends/cupy_ops.py).
//
// Every kernel is a grid-stride loop in which each output element is written by exactly one
// thread (gathers, no atomics), so any launch shape gives the same result. Tensors are
// contiguous float32; spatial geometry is always 3-D (a 1-D or 2-D conv is padded with
// leading axes of size 1, kernel 1, stride 1, dilation 1, pad 0).
//
// Stabilised division (TSGB paper): a / (d + 1e-10 * sgn(d)), sgn(0) = +1.
//
// TSGB-Conv (eq. 5) per conv group gr:
//   tsgb_group_sums     R[b,gr,o] = sum_{n in gr} Y[b,n,o] * G[b,n,o]
//                       M[b,gr,s] = sum_{m in gr} |X[b,m,s]|
//   tsgb_box_ratio      Q[b,gr,o] = R[b,gr,o] / (box(M)[b,gr,o] + eps)   (in place on R)
//   tsgb_spread_sign    GX[b,m,s] = sign(X[b,m,s]) * boxT(Q)[b,gr(m),s]
// Eq. 6:                GX = G * (Y / (X + eps * sgn(X)))
// TSGB-FC (eq. 1-2):    H[b, :N] = G[b, :],  H[b, N:] = (P / (Nn + eps)) * alpha * G
//                       (then GX = H @ [W+^T; W-^T], one matrix product)

#define TSGB_EPS 1e-10f

#define GRID_STRIDE_LOOP(i, total)                                                     \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total);  \
         i += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void tsgb_group_sums(
    const float* __restrict__ y, const float* __restrict__ g, const float* __restrict__ x,
    float* __restrict__ relevance, float* __restrict__ mass,
    long long batch, long long groups, long long n_per_group, long long m_per_group,
    long long out_size, long long in_size)
{
    // first batch*groups*out_size threads: R; next batch*groups*in_size threads: M
    const long long n_rel = batch * groups * out_size;
    const long long n_mass = batch * groups * in_size;
    GRID_STRIDE_LOOP(i, n_rel + n_mass) {
        if (i < n_rel) {
            const long long o = i % out_size;
            const long long bg = i / out_size;              // b * groups + gr
            const long long base = bg * n_per_group * out_size + o;
            float acc = 0.f;
            for (long long n = 0; n < n_per_group; ++n) {
                acc += y[base + n * out_size] * g[base + n * out_size];
            }
            relevance[i] = acc;
        } else {
            const long long j = i - n_rel;
            const long long s = j % in_size;
            const long long bg = j / in_size;
            const long long base = bg * m_per_group * in_size + s;
            float acc = 0.f;
            for (long long m = 0; m < m_per_group; ++m) {
                acc += fabsf(x[base + m * in_size]);
            }
            mass[j] = acc;
        }
    }
}

extern "C" __global__ void tsgb_box_ratio(
    float* __restrict__ ratio, const float* __restrict__ mass, long long planes,
    long long s0, long long s1, long long s2, long long o0, long long o1, long long o2,
    long long k0, long long k1, long long k2, long long st0, long long st1, long long st2,
    long long d0, long long d1, long long d2, long long p0, long long p1, long long p2)
{
    // ratio holds R on entry and Q = R / (box(M) + eps) on exit; box(M) >= 0
    const long long out_size = o0 * o1 * o2;
    const long long in_size = s0 * s1 * s2;
    GRID_STRIDE_LOOP(i, planes * out_size) {
        const long long plane = i / out_size;
        const long long o = i % out_size;
        const long long a2 = o % o2;
        const long long a1 = (o / o2) % o1;
        const long long a0 = o / (o2 * o1);
        const float* m = mass + plane * in_size;
        float box = 0.f;
        for (long long c0 = 0; c0 < k0; ++c0) {
            const long long i0 = a0 * st0 + c0 * d0 - p0;
            if (i0 < 0 || i0 >= s0) continue;
            for (long long c1 = 0; c1 < k1; ++c1) {
                const long long i1 = a1 * st1 + c1 * d1 - p1;
                if (i1 < 0 || i1 >= s1) continue;
                for (long long c2 = 0; c2 < k2; ++c2) {
                    const long long i2 = a2 * st2 + c2 * d2 - p2;
                    if (i2 < 0 || i2 >= s2) continue;
                    box += m[(i0 * s1 + i1) * s2 + i2];
                }
            }
        }
        ratio[i] = ratio[i] / (box + TSGB_EPS);
    }
}

extern "C" __global__ void tsgb_spread_sign(
    const float* __restrict__ ratio, const float* __restrict__ x, float* __restrict__ gx,
    long long planes, long long m_per_group,
    long long s0, long long s1, long long s2, long long o0, long long o1, long long o2,
    long long k0, long long k1, long long k2, long long st0, long long st1, long long st2,
    long long d0, long long d1, long long d2, long long p0, long long p1, long long p2)
{
    // one thread per (b, gr, s): gather the transposed box sum, write every channel of gr
    const long long out_size = o0 * o1 * o2;
    const long long in_size = s0 * s1 * s2;
    GRID_STRIDE_LOOP(i, planes * in_size) {
        const long long plane = i / in_size;
        const long long s = i % in_size;
        const long long a2 = s % s2;
        const long long a1 = (s / s2) % s1;
        const long long a0 = s / (s2 * s1);
        const float* q = ratio + plane * out_size;
        float spread = 0.f;
        for (long long c0 = 0; c0 < k0; ++c0) {
            const long long t0 = a0 + p0 - c0 * d0;
            if (t0 < 0 || t0 % st0 != 0 || t0 / st0 >= o0) continue;
            for (long long c1 = 0; c1 < k1; ++c1) {
                const long long t1 = a1 + p1 - c1 * d1;
                if (t1 < 0 || t1 % st1 != 0 || t1 / st1 >= o1) continue;
                for (long long c2 = 0; c2 < k2; ++c2) {
                    const long long t2 = a2 + p2 - c2 * d2;
                    if (t2 < 0 || t2 % st2 != 0 || t2 / st2 >= o2) continue;
                    spread += q[((t0 / st0) * o1 + t1 / st1) * o2 + t2 / st2];
                }
            }
        }
        const long long base = plane * m_per_group * in_size + s;
        for (long long m = 0; m < m_per_group; ++m) {
            const float v = x[base + m * in_size];
            const float sign = (float)((v > 0.f) - (v < 0.f));
            gx[base + m * in_size] = sign * spread;
        }
    }
}

extern "C" __global__ void tsgb_eq6(
    const float* __restrict__ g, const float* __restrict__ y, const float* __restrict__ x,
    float* __restrict__ gx, long long total)
{
    GRID_STRIDE_LOOP(i, total) {
        const float d = x[i];
        const float stabilised = d + (d >= 0.f ? TSGB_EPS : -TSGB_EPS);
        gx[i] = g[i] * (y[i] / stabilised);
    }
}

extern "C" __global__ void tsgb_fc_combine(
    const float* __restrict__ positive, const float* __restrict__ negative,
    const float* __restrict__ g, float* __restrict__ h, long long batch, long long classes,
    float alpha)
{
    // negative >= 0 (|x| @ |W-| or |x @ W-|), so its stabiliser is +eps
    GRID_STRIDE_LOOP(i, batch * classes) {
        const long long b = i / classes;
        const long long n = i % classes;
        const float scale = (positive[i] / (negative[i] + TSGB_EPS)) * alpha;
        h[b * 2 * classes + n] = g[i];
        h[b * 2 * classes + classes + n] = scale * g[i];
    }
}
