/* Fused CPU kernels of the HTAF op family: one pass over memory per op, vectorised by the
 * compiler, split over threads for large tensors.  Loaded by htaf/kernels/cpu.py (read that
 * module's docstring first); the PyTorch references in htaf/kernels/{reference,baselines,lif}.py
 * are the definition these kernels are tested against.
 *
 * The file is compiled twice (htaf._build caches each library per machine):
 *   HTAF_F64 undefined: math in float32; storage float32, float16 or bfloat16 (dtype code 0/1/2),
 *                       converted on load, rounded once on store;
 *   HTAF_F64=1:         math and storage in float64 (dtype code 0 only; libm's exp).
 *
 * Vectorisation without -ffast-math (which would break NaN and inf): every per-element function
 * is branch-free C (selects written as ?:) that gcc/clang vectorise at -O3, and the only
 * transcendental, exp, is our own polynomial for float32 (exp_nonpos, and exp2_nonpos for HTAF).
 * Every caller passes it a non-positive argument (−|·| or −(·)²), so it never overflows.  The
 * exceptions to "the compiler vectorises" are intrinsics for what no compiler emits from C:
 * HTAF's two base-2 exponentials on AVX-512 (exp2_v16: vrndscaleps, vscalefps) and the streaming
 * stores of large outputs (stream_copy on x86; htaf_finish for HTAF on AVX-512).  They give the
 * same bits as the portable C (HTAF_NO_SIMD=1 builds that path, htaf_cpu_set_stream_min moves
 * the streaming threshold; tests compare them).
 *
 * Threads: OpenMP where the compiler has it (sharing PyTorch's pool: see parallel_for), else a
 * pthread per piece.  A call splits its range into at most `nthreads` contiguous pieces
 * (the caller passes torch.get_num_threads()) only when each piece gets at least `grain`
 * elements; the results do not depend on the thread count (elementwise ops trivially, the LIF's
 * dL/dk by summing fixed-size blocks in a fixed order).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && !defined(HTAF_F64) && !defined(HTAF_NO_SIMD)
#define HTAF_AVX512 1
#endif
#if defined(__F16C__) || defined(HTAF_AVX512) || defined(__SSE2__)
#include <immintrin.h>
#endif

#ifdef HTAF_F64
typedef double real;
#define REAL_MAX DBL_MAX
#else
typedef float real;
#define REAL_MAX FLT_MAX
#endif

#define BLK 512            /* elements per inner block: buffers stay in L1 */
#define MAX_THREADS 256

enum { DT_NATIVE = 0, DT_F16 = 1, DT_BF16 = 2 };

/* ------------------------------------------------------------------------------- threads */
typedef void (*range_fn)(void *ctx, int64_t lo, int64_t hi);

#ifndef _OPENMP
struct piece { range_fn fn; void *ctx; int64_t lo, hi; };

static void *run_piece(void *arg) {
    struct piece *p = (struct piece *)arg;
    p->fn(p->ctx, p->lo, p->hi);
    return NULL;
}
#endif

/* fn(ctx, lo, hi) over [0, n) in at most nthreads pieces of >= grain elements each, piece
 * boundaries multiples of `align`.
 *
 * Built with -fopenmp (cpu.py tries that first), the pieces run on OpenMP threads: in a PyTorch
 * process `libgomp.so.1` resolves to the copy PyTorch loaded, so these kernels and PyTorch's
 * own ops share one pool.  With threads of our own (the fallback: one pthread per piece, the
 * calling thread running the first), ours competed with PyTorch's OpenMP workers, which spin
 * for a while after each of its parallel regions: on this 2-core machine, HTAF forward +
 * backward on 1M elements took 3.4 ms with 2 threads against 2.4 ms with 1. */
static void parallel_for(range_fn fn, void *ctx, int64_t n, int64_t grain, int64_t align,
                         int nthreads) {
    if (n <= 0) return;
    int64_t most = n / (grain > 0 ? grain : 1);
    if (nthreads > most) nthreads = (int)most;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads <= 1) { fn(ctx, 0, n); return; }
    int64_t per = (n + nthreads - 1) / nthreads;
    per = (per + align - 1) / align * align;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static, 1)
    for (int i = 0; i < nthreads; ++i) {
        int64_t lo = i * per, hi = lo + per < n ? lo + per : n;
        if (lo < hi) fn(ctx, lo, hi);
    }
#else
    struct piece pieces[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int i = 1; i < nthreads; ++i) {
        int64_t lo = i * per, hi = lo + per < n ? lo + per : n;
        pieces[i] = (struct piece){fn, ctx, lo, hi};
        started[i] = lo < hi && pthread_create(&threads[i], NULL, run_piece, &pieces[i]) == 0;
        if (!started[i] && lo < hi) fn(ctx, lo, hi);   /* no thread to be had: run it here */
    }
    fn(ctx, 0, per < n ? per : n);
    for (int i = 1; i < nthreads; ++i)
        if (started[i]) pthread_join(threads[i], NULL);
#endif
}

/* 1 where HTAF's exponentials run the AVX-512 intrinsics (exp2_v16), 0 on the portable C. */
int htaf_cpu_avx512(void) {
#ifdef HTAF_AVX512
    return 1;
#else
    return 0;
#endif
}

/* 1 when the pieces run on OpenMP threads (PyTorch's pool), 0 with a pthread per piece */
int htaf_cpu_threading(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---------------------------------------------------------------------- float32 exponential */
#ifdef HTAF_F64
static inline double exp_nonpos(double v) { return exp(v); }
#else
static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* e^v for v <= 0.  NaN gives NaN, −inf gives 0, results below 2^−126 are correctly rounded
 * subnormals.  v = n·ln2 + r, |r| <= ln2/2 (ln2 in two parts, so r is exact); e^r − 1 = q =
 * r + r²·P(r) with P a degree-4 near-minimax fit (relative error 5e-9, far below float32's
 * 6e-8); then the result is (1 + q)·2^(n+64)·2^−64: the first product is exact and normal, the
 * second rounds once.  Max error 1.03 ulp over [−110, 0] (tests/test_cpu_kernels.py). */
static inline float exp_nonpos(float v) {
    const float shifter = 12582912.0f;                  /* 1.5·2^23: adding it rounds to int */
    v = v < -110.0f ? -110.0f : v;                      /* NaN compares false: it stays NaN */
    float kf = v * 1.44269504088896341f + shifter;
    int32_t n = (int32_t)(bits_of(kf) - bits_of(shifter));   /* round(v / ln 2) in [−159, 0] */
    kf -= shifter;
    float r = v - kf * 0.693145751953125f;              /* ln2 high part: 16 significant bits */
    r = r - kf * 1.42860682030941723e-6f;               /* ln2 − the high part */
    float p = 1.3879685429856181e-3f;
    p = p * r + 8.368694223463535e-3f;
    p = p * r + 4.166722670197487e-2f;
    p = p * r + 1.666652113199234e-1f;
    p = p * r + 4.999999701976776e-1f;
    float q = p * (r * r) + r;
    return ((q + 1.0f) * float_of((uint32_t)(n + 191) << 23)) * 5.421010862427522e-20f;
}
#endif

/* ---------------------------------------------------------------------------- storage types */
#ifndef HTAF_F64
/* float16 <-> float32, branch-free bit arithmetic (vectorises; exact; round-to-nearest-even). */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    /* exponent/mantissa moved into float position is the value times 2^−112 (subnormals too) */
    float mag = float_of(em << 13) * 5.192296858534828e33f;    /* 2^112 */
    uint32_t m = bits_of(mag);
    m = em >= 0x7c00u ? (em << 13) | 0x7f800000u : m;        /* inf and NaN */
    return float_of(sign | m);
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t x = bits_of(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    /* normal range: rebias the exponent, round to nearest even on the 13 dropped bits */
    uint32_t normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    /* subnormal range (|f| < 2^−14): adding 0.5 puts the rounded value in the low bits */
    uint32_t sub = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
    uint32_t h = a < (113u << 23) ? sub : normal;
    h = a >= 0x47800000u ? 0x7c00u : h;                       /* >= 65536: overflow to inf */
    h = a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : h; /* NaN stays a (quiet) NaN */
    return (uint16_t)(sign | h);
}

static inline float bf16_to_f32(uint16_t h) { return float_of((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16(float f) {
    uint32_t x = bits_of(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);   /* NaN as torch */
}
#endif

/* src[0:n] (storage `dt`) -> dst[0:n] (real), and back.  float16 uses the F16C conversion
 * instructions where the CPU has them (gcc does not vectorise _Float16 conversions), 8 at a
 * time, and the bit arithmetic above for the rest: the same IEEE results either way. */
static void load_block(int dt, const void *src, int64_t off, real *dst, int64_t n) {
#ifndef HTAF_F64
    if (dt == DT_F16) {
        const uint16_t *s = (const uint16_t *)src + off;
        int64_t j = 0;
#ifdef __F16C__
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + j))));
#endif
        for (; j < n; ++j) dst[j] = f16_to_f32(s[j]);
        return;
    }
    if (dt == DT_BF16) {
        const uint16_t *s = (const uint16_t *)src + off;
        for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_f32(s[j]);
        return;
    }
#endif
    (void)dt;
    memcpy(dst, (const real *)src + off, (size_t)n * sizeof(real));
}

static void store_block(int dt, const real *src, void *dst, int64_t off, int64_t n) {
#ifndef HTAF_F64
    if (dt == DT_F16) {
        uint16_t *d = (uint16_t *)dst + off;
        int64_t j = 0;
#ifdef __F16C__
        for (; j + 8 <= n; j += 8)
            _mm_storeu_si128((__m128i *)(d + j),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; j < n; ++j) d[j] = f32_to_f16(src[j]);
        return;
    }
    if (dt == DT_BF16) {
        uint16_t *d = (uint16_t *)dst + off;
        for (int64_t j = 0; j < n; ++j) d[j] = f32_to_bf16(src[j]);
        return;
    }
#endif
    (void)dt;
    memcpy((real *)dst + off, src, (size_t)n * sizeof(real));
}

/* A read-only block of `n` reals at element `off`: the storage itself when it holds reals,
 * else converted into `buf`. */
static inline const real *view_in(int dt, const void *src, int64_t off, real *buf, int64_t n) {
    if (dt == DT_NATIVE) return (const real *)src + off;
    load_block(dt, src, off, buf, n);
    return buf;
}

/* ------------------------------------------------------------------------ streaming stores */
/* The outputs of the ops that memory bounds (step, the product, the backward of the cheap
 * surrogates), when of at least stream_min bytes (32 MiB: larger than the caches of most CPUs,
 * and about where PyTorch's own copy_, through glibc's memcpy, streams too), are written with
 * non-temporal stores: an ordinary store first reads the line it writes (read for ownership),
 * so each output costs two passes over memory instead of one.  Blocks are computed into an L1
 * buffer, then streamed (stream_copy).  A consumer reads such an output from memory, not from
 * the cache, which at that size it would have done anyway.  One thread, Zen 4, 16M floats, in
 * C: a product a·b 11.3 ms with ordinary stores, 7.8–9.0 ms streamed; a copy loop 7.4–7.9 ms
 * and 4.8–5.5 (PyTorch's copy_, benchmarks/bench_cpu.py's yardstick: 5.5 ms).  Through the
 * kernels (interleaved, best of 25): step 5.9 → 5.3 ms, product 11.5 → 10.4, atan's backward
 * 10.5 → 10.1; but HTAF's forward with slope 10.9 → 12.3 and its backward 12.1 → 13.5, so HTAF
 * does not stream through the buffer (the copy adds instructions where their number bounds
 * it): on AVX-512 it streams from the registers (htaf_finish), elsewhere not; swish_sign never.
 * x86 only (SSE2 / AVX / AVX-512 streams of 16 / 32 / 64 bytes); elsewhere plain copies. */
static int64_t stream_min = (int64_t)32 << 20;

/* The threshold in bytes (tests lower it to run the streaming path on small tensors). */
void htaf_cpu_set_stream_min(int64_t bytes) { stream_min = bytes; }

static inline int streams(int64_t n, int dt) {
    return n * (int64_t)(dt == DT_NATIVE ? sizeof(real) : 2) >= stream_min;
}

/* HTAF's kernels stream only from registers (htaf_finish: AVX-512, float32 storage). */
static inline int htaf_streams(int64_t n, int dt) {
#ifdef HTAF_AVX512
    return dt == DT_NATIVE && streams(n, dt);
#else
    (void)n, (void)dt;
    return 0;
#endif
}

#if defined(HTAF_AVX512)
#define STREAM_BYTES 64
#define STREAM(d, s) _mm512_stream_si512((void *)(d), _mm512_loadu_si512((const void *)(s)))
#elif defined(__AVX__)
#define STREAM_BYTES 32
#define STREAM(d, s) _mm256_stream_si256((__m256i *)(d), _mm256_loadu_si256((const __m256i *)(s)))
#elif defined(__SSE2__)
#define STREAM_BYTES 16
#define STREAM(d, s) _mm_stream_si128((__m128i *)(d), _mm_loadu_si128((const __m128i *)(s)))
#endif

/* dst ← src, `bytes` bytes, the aligned middle with non-temporal stores */
static void stream_copy(void *restrict dst, const void *restrict src, size_t bytes) {
    char *d = (char *)dst;
    const char *s = (const char *)src;
#ifdef STREAM_BYTES
    size_t head = (size_t)(-(uintptr_t)d & (STREAM_BYTES - 1));
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= STREAM_BYTES; bytes -= STREAM_BYTES, d += STREAM_BYTES, s += STREAM_BYTES)
        STREAM(d, s);
#endif
    memcpy(d, s, bytes);
}

/* After a range's streamed stores: they are weakly ordered, the fence makes them visible
 * before the thread reports its piece done. */
static inline void stream_fence(int stream) {
#ifdef STREAM_BYTES
    if (stream) _mm_sfence();
#else
    (void)stream;
#endif
}

/* Where to write a block: the storage itself for reals, else `buf` (then flush_out), also for
 * reals when the output is streamed. */
static inline real *view_out(int dt, int stream, void *dst, int64_t off, real *buf) {
    return dt == DT_NATIVE && !stream ? (real *)dst + off : buf;
}

static inline void flush_out(int dt, int stream, const real *buf, void *dst, int64_t off,
                             int64_t n) {
    if (!stream) {
        if (dt != DT_NATIVE) store_block(dt, buf, dst, off, n);
        return;
    }
#ifndef HTAF_F64
    if (dt != DT_NATIVE) {
        uint16_t half[BLK];
        store_block(dt, buf, half, 0, n);
        stream_copy((uint16_t *)dst + off, half, (size_t)n * 2);
        return;
    }
#endif
    stream_copy((real *)dst + off, buf, (size_t)n * sizeof(real));
}

/* ------------------------------------------------------------------------------- the math */
/* tanh and sech² of a >= 0 (HTAF, swish_sign) from t = e^(−2a): tanh(a) = (1 − t)·r,
 * sech²(a) = 4·t·r², with r = 1/(1 + t).  Near 0, 1 − t is exact (Sterbenz) and only t's
 * rounding reaches it, an absolute 3e-8 (invisible in HTAF's σ(z) ≈ ½ there); a select of the
 * more accurate form per range (e^v − 1 near 0, 1 − 2·t·r beyond) gained under an ulp on HTAF
 * and cost 20 % of its time.  HTAF writes tanh as r − t·r, sharing the product t·r with sech²
 * (b2·r and t·(b2·r) in htaf_stages): one multiplication fewer, where the number of vector
 * instructions bounds its time (the FMA pipes alone do not: a table-driven 2^r with fewer FMAs
 * and as many instructions in all gained nothing); t·r's rounding adds another absolute 3e-8
 * near 0 (the worst error of HTAF for |z| < 1 went from 2.7 to 2.9 ulp on the defaults,
 * medians unchanged).
 *
 * HTAF runs in stages over blocks of at most BLK elements (htaf_stages): each stage is a loop
 * with a short dependency chain, so the CPU overlaps many elements.  Per element HTAF is one
 * chain of two exponentials and two divisions, about 150 cycles of latency and more
 * instructions than the out-of-order window holds for several elements: written as one loop it
 * ran latency-bound, about 2× slower than in stages on this Zen 3 (the buffers stay in L1).
 * Staging the one-exponential surrogates (sigmoid, swish_sign) made them slower: their chains
 * are short enough; splitting HTAF further (the divisions in loops of their own, or next to the
 * exponentials) made it slower too.
 *
 * HTAF's exponentials are in base 2 (exp2_nonpos), its constants scaled by log2 e once per call:
 * 15 % faster than e^v with a two-part ln 2 reduction, at the price of the rounding of those
 * constants, which adds to the conditioning error of e^z (relative |z|·ulp): on the default
 * α = 0.5, β = 4, γ = 1 (where the old products were exact) the median error of HTAF' went from
 * 1.2 to 2.6 ulp, of HTAF from 0.5 to 0.8 ulp; the worst cases stay within the conditioning
 * bound, like torch's float32 reference (tests/test_cpu_kernels.py). */

/* 2^v for v <= 0: NaN gives NaN, −inf gives 0, results below 2^−126 are correctly rounded
 * subnormals.  float32: v = n + r with n = round(v) and |r| <= 1/2 exact; 2^r = 1 + r·P(r), P of
 * degree 5 (a near-minimax fit, relative error 1.6e-8); the result is 2^r·2^(n+64)·2^−64, the
 * first product exact and normal, the second rounding once.  About 1 ulp
 * (tests/test_cpu_kernels.py).  Against exp_nonpos it saves the two-part ln 2 reduction: HTAF
 * works in base 2, its constants scaled by log2 e once per call (htaf_constants). */
#ifdef HTAF_F64
static inline double exp2_nonpos(double v) { return exp2(v); }
static inline double exp2_flush(double v) { return exp2(v); }
#else
/* v = n + r with n = round(v) (returned as an int in two's complement) and |r| <= 1/2 exact;
 * *pow2_r = 2^r in [0.70, 1.42] by the polynomial.  The one definition of 2^r for both below. */
static const float EXP2_P[6] = {1.5353361959569156e-4f, 1.3398875016719103e-3f,
                                9.61843691766262e-3f, 5.5503323674201965e-2f,
                                2.4022647738456726e-1f, 6.931471824645996e-1f};

static inline uint32_t exp2_split(float v, float *pow2_r) {
    const float shifter = 12582912.0f;                  /* 1.5·2^23: adding it rounds to int */
    float kf = v + shifter;
    float r = v - (kf - shifter);                       /* exact */
    float p = EXP2_P[0];
    for (int i = 1; i < 6; ++i) p = p * r + EXP2_P[i];
    *pow2_r = p * r + 1.0f;
    return bits_of(kf) - bits_of(shifter);
}

static inline float exp2_nonpos(float v) {
    float y;
    v = v < -159.0f ? -159.0f : v;                      /* 2^−159 rounds to 0 */
    uint32_t n64 = exp2_split(v, &y) + 64;              /* round(v) + 64 in [−95, 64] */
    return (y * float_of((n64 + 127) << 23)) * 5.421010862427522e-20f;
}

/* 2^v for v <= 0 with results below 2^−125 flushed to 0 (NaN gives an unspecified number):
 * the same 2^r, 2^n put into the exponent with an integer add instead of the two
 * multiplications.  For t = e^(−2|γx|) only, where neither matters: tanh is then exactly ±1,
 * sech² below 2^−123 (next to α in the slope's factor), and a NaN x reaches z through α·x.
 * With the shared t·r below, 5–10 % off HTAF's time on data in L2 (one thread, Zen 4; HTAF is
 * bound by the vector instructions it issues, see exp2_v16). */
static inline float exp2_flush(float v) {
    float y;
    uint32_t n = exp2_split(v, &y);
    float scaled = float_of(bits_of(y) + (n << 23));    /* normal for n >= −125 */
    return v < -125.0f ? 0.0f : scaled;
}
#endif

#ifdef HTAF_AVX512
/* 2^v on 16 lanes, v <= 0: exp2_nonpos's algorithm and bits, in 12 vector instructions instead
 * of 17: n = round(v) by vrndscaleps (ties to even, as the shifter above) and 2^r·2^n by
 * vscalefps, which rounds once, into the subnormals too (the two multiplications of
 * exp2_nonpos do the same in two steps).  −inf and NaN: the clamp maps −inf to −159 (2^−159
 * rounds to 0) and keeps NaN (vmaxps returns its second operand when one is NaN).  HTAF is
 * bound by the number of vector instructions its four stages issue (not by its two divisions:
 * removing them saved 6 %); with these two exponentials it takes 15 % less time on Zen 4
 * (forward with slope at 1M elements, one thread, 0.60 → 0.51 ns per element). */
static inline __m512 exp2_v16(__m512 v) {
    v = _mm512_max_ps(_mm512_set1_ps(-159.0f), v);
    __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(v, n);                     /* exact */
    __m512 p = _mm512_set1_ps(EXP2_P[0]);
    for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP2_P[i]));
    return _mm512_scalef_ps(_mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f)), n);
}
#endif

/* out[j] = 2^(c·|v[j]|) for j < n, c < 0: exp2_flush's contract (flush) or exp2_nonpos's.  On
 * AVX-512 exp2_v16 serves both (it does not flush; for HTAF's t = e^(−2|γx|) that changes
 * nothing downstream: below 2^−125, 1 + t rounds to 1 and t's terms vanish next to α). */
static inline void exp2_neg_abs(const real *restrict v, real c, real *restrict out, int64_t n,
                                int flush) {
    int64_t j = 0;
#ifdef HTAF_AVX512
    if (c == -1) {                                      /* −|v|: set the sign bit */
        const __m512 sign = _mm512_set1_ps(-0.0f);
        for (; j + 16 <= n; j += 16)
            _mm512_storeu_ps(out + j, exp2_v16(_mm512_or_ps(_mm512_loadu_ps(v + j), sign)));
    } else {
        const __m512 vc = _mm512_set1_ps(c);
        for (; j + 16 <= n; j += 16)
            _mm512_storeu_ps(out + j, exp2_v16(_mm512_mul_ps(vc, _mm512_abs_ps(_mm512_loadu_ps(v + j)))));
    }
#endif
    if (flush)
        for (; j < n; ++j) out[j] = exp2_flush(c * (real)fabs(v[j]));
    else
        for (; j < n; ++j) out[j] = exp2_nonpos(c * (real)fabs(v[j]));
}

/* HTAF's constants in the forms its stages use, rounded once from float64: tanh(γx) from
 * t = 2^(ct·|x|), ct = −2|γ|·log2 e; z is kept in base 2, z2 = z·log2 e = a2·x + b2·sgn(x)·|tanh|
 * (sign of γ folded into b2), so e^(−|z|) = 2^(−|z2|); the slope's factor k = s·(α + 4βγ·sech²)
 * with the caller's scale s folded in, written k = sa + (kc·b2·t·r)·(b2·r) with
 * kc = s·4βγ / b2² (0 for β = 0), because the stages compute b2·r = b2/(1 + t), not r: the
 * division by (1 + t) costs the same with b2 as numerator, and b2·tanh = b2·r − t·(b2·r) then
 * needs no multiplication by b2 (one vector instruction fewer, 4 % of HTAF's time; the worst
 * error of HTAF' for |z| < 1 on the defaults went from 6.4 to 6.7 ulp, through the rounding of
 * kc).  The products are grouped so that none overflows or underflows before the last:
 * kc·(b2·t·r) is about 4γs·t·r/log2 e whatever β; kc = s·4γ/(β·log2² e), clamped to the
 * largest finite value (for a β so small that this overflows, the term is below α's last bit). */
struct htaf_k { real ct, a2, b2, sa, kc; };

static struct htaf_k htaf_constants(double a, double b, double g, double scale) {
    const double log2e = 1.4426950408889634;
    double kc = b != 0 ? scale * 4 * g / (b * log2e * log2e) : 0;
    kc = fabs(kc) <= REAL_MAX ? kc : copysign(REAL_MAX, kc);
    struct htaf_k k = {(real)(-2 * fabs(g) * log2e), (real)(a * log2e),
                       (real)((g < 0 ? -b : b) * log2e), (real)(scale * a), (real)kc};
    return k;
}

/* HTAF's parts, for j < n: t = e^(−2|γx|), z2 = z·log2 e with z = α·x + β·tanh(γx),
 * k = s·(α + β·γ·sech²(γx)) and e = e^(−|z|) (tanh and sech² from t and r = 1/(1 + t), above);
 * then σ(z) = 1/(1 + e) for z >= 0 (e/(1 + e) below) and σ(z)σ(−z) = e/(1 + e)². */
struct htaf_parts { _Alignas(64) real t[BLK]; _Alignas(64) real z[BLK];
                    _Alignas(64) real k[BLK]; _Alignas(64) real e[BLK]; };

static void htaf_stages(const real *restrict x, const struct htaf_k *c, int64_t n,
                        struct htaf_parts *restrict h) {
    const real a2 = c->a2, b2 = c->b2, sa = c->sa, kc = c->kc;
    exp2_neg_abs(x, c->ct, h->t, n, 1);
    for (int64_t j = 0; j < n; ++j) {
        real t = h->t[j], br = b2 / (1 + t), tbr = t * br, bth = br - tbr;   /* b2·tanh */
        h->z[j] = a2 * x[j] + (real)copysign(bth, x[j]);
        h->k[j] = sa + (kc * tbr) * br;
    }
    exp2_neg_abs(h->z, -1, h->e, n, 0);
}

static inline real htaf_value_of(const struct htaf_parts *h, int64_t j) {
    real e = h->e[j], q = 1 / (1 + e);
    return h->z[j] >= 0 ? q : e * q;
}

/* s·HTAF'(x) = σ(z)σ(−z)·k */
static inline real htaf_slope_of(const struct htaf_parts *h, int64_t j) {
    real e = h->e[j], q = 1 / (1 + e);
    return (e * q * q) * h->k[j];
}

/* HTAF's last stage over a block of n: y[j] = HTAF (y not NULL) and d[j] = s·HTAF', times gin[j]
 * when gin is not NULL (d not NULL).  stream: the outputs are large (htaf_streams); on AVX-512,
 * with n a multiple of 16 and y, d 64-byte aligned, they are written with streaming stores
 * straight from the registers, the same operations in the same order (the same bits) as the
 * loops below.  Unlike the cheap ops (stream_copy from a block buffer: two more instructions per
 * vector, which made HTAF slower), this gained: forward with slope at 16M elements, one thread,
 * 12.4 → 10.6 ms (A/B in one process). */
static void htaf_finish(const struct htaf_parts *restrict h, int64_t n, const real *restrict gin,
                        real *restrict y, real *restrict d, int stream) {
#ifdef HTAF_AVX512
    if (stream && n % 16 == 0 && !(((uintptr_t)y | (uintptr_t)d) & 63)) {
        const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j += 16) {
            __m512 e = _mm512_load_ps(h->e + j), q = _mm512_div_ps(one, _mm512_add_ps(one, e));
            __m512 eq = _mm512_mul_ps(e, q);
            if (y) {
                __mmask16 up = _mm512_cmp_ps_mask(_mm512_load_ps(h->z + j), zero, _CMP_GE_OQ);
                _mm512_stream_ps(y + j, _mm512_mask_blend_ps(up, eq, q));
            }
            if (d) {
                __m512 slope = _mm512_mul_ps(_mm512_mul_ps(eq, q), _mm512_load_ps(h->k + j));
                _mm512_stream_ps(d + j, gin ? _mm512_mul_ps(_mm512_loadu_ps(gin + j), slope) : slope);
            }
        }
        return;
    }
#else
    (void)stream;
#endif
    if (y && d) {
        for (int64_t j = 0; j < n; ++j) {
            y[j] = htaf_value_of(h, j);
            d[j] = htaf_slope_of(h, j);
        }
    } else if (y) {
        for (int64_t j = 0; j < n; ++j) y[j] = htaf_value_of(h, j);
    } else if (gin) {
        for (int64_t j = 0; j < n; ++j) d[j] = gin[j] * htaf_slope_of(h, j);
    } else {
        for (int64_t j = 0; j < n; ++j) d[j] = htaf_slope_of(h, j);
    }
}

static inline real clamp0(real v) { return v < 0 ? 0 : v; }   /* NaN stays NaN */

/* Derivatives of the baselines, one per kind id (the ids of htaf.kernels.cpu.KINDS), from the
 * constants cpu.py computes in float64: (p, c) as in htaf.kernels.baselines.constants. */
#define D_ATAN(x)      (c0 / (1 + (c1 * (x)) * (c1 * (x))))
#define D_FASTSIG(x)   (c0 / ((1 + c1 * (real)fabs(x)) * (1 + c1 * (real)fabs(x))))
#define D_SUPER(x)     (c0 / ((1 + (real)fabs(x)) * (1 + (real)fabs(x))))
#define D_PQUAD(x)     clamp0(c0 - c1 * (real)fabs(x))
#define D_PEXP(x)      (c0 * exp_nonpos(-(c1 * (real)fabs(x))))
#define D_ERF(x)       (c0 * exp_nonpos(-((c1 * (x)) * (c1 * (x)))))
#define D_TRIANGLE(x)  (c0 * clamp0(1 - (real)fabs(x)))
#define D_RECT(x)      ((real)fabs(x) < c1 ? c0 : (real)0)
#define D_STE(x)       ((real)fabs(x) <= c1 ? (real)1 : (real)0)

static inline real sigmoid_d(real x, real p, real c) {   /* p·e/(1 + e)², e = e^(−c|x|) */
    real e = exp_nonpos(-(c * (real)fabs(x)));
    real w = 1 + e;
    return p * e / (w * w);
}

/* p·(2 − 2|u|·tanh|u|)·sech²u, u = c·x */
static inline real swish_d(real x, real p, real c) {
    real au = c * (real)fabs(x), t = exp_nonpos(-2 * au), r = 1 / (1 + t), th = (1 - t) * r;
    real s2 = 4 * t * r * r;
    real d = p * (2 - 2 * au * th) * s2;
    return s2 == 0 ? 0 : d;     /* where sech² underflows the derivative is 0, ±inf included */
}
#define D_SIGMOID(x)   sigmoid_d(x, c0, c1)
#define D_SWISH(x)     swish_d(x, c0, c1)

/* out[j] = gin[j]·(scale·g'(u[j])), or scale·g'(u[j]) when gin is NULL; stream: HTAF's
 * outputs are large (htaf_finish) */
static void surrogate_block(int kind, const real *c, real scale, const real *restrict u,
                            const real *restrict gin, real *restrict out, int64_t n,
                            int stream) {
    const real c0 = c[0], c1 = c[1], c2 = c[2];
    if (kind == 0) {   /* HTAF, in stages (htaf_stages) of at most BLK elements */
        struct htaf_parts h;
        const struct htaf_k hk = htaf_constants(c0, c1, c2, scale);
        for (int64_t i = 0; i < n; i += BLK) {
            const int64_t m = n - i < BLK ? n - i : BLK;
            htaf_stages(u + i, &hk, m, &h);
            htaf_finish(&h, m, gin ? gin + i : NULL, NULL, out + i, stream);
        }
        return;
    }
    /* BODY(D) expands to a loop computing D(x); one instance per kind, so each loop vectorises */
#define WITH_GRAD(D) for (int64_t j = 0; j < n; ++j) out[j] = gin[j] * (scale * D(u[j]));
#define NO_GRAD(D)   for (int64_t j = 0; j < n; ++j) out[j] = scale * D(u[j]);
#define SWITCH_KIND(BODY)                                                                  \
    switch (kind) {                                                                        \
    case 1: BODY(D_SIGMOID) break;   case 2: BODY(D_ATAN) break;                           \
    case 3: BODY(D_FASTSIG) break;   case 4: BODY(D_SUPER) break;                          \
    case 5: case 11: BODY(D_PQUAD) break;                                                  \
    case 6: BODY(D_PEXP) break;      case 7: BODY(D_ERF) break;                            \
    case 8: BODY(D_TRIANGLE) break;  case 9: BODY(D_RECT) break;                           \
    case 10: BODY(D_STE) break;      default: BODY(D_SWISH) break;                         \
    }
    if (gin) { SWITCH_KIND(WITH_GRAD) } else { SWITCH_KIND(NO_GRAD) }
#undef SWITCH_KIND
#undef WITH_GRAD
#undef NO_GRAD
}

/* ----------------------------------------------------------------------- elementwise ops */
struct ew_ctx {
    const void *x, *g;
    void *out, *g_out;
    int dt, kind, signed_, stream;
    real c[3], scale;
    struct htaf_k hk;   /* htaf_forward, htaf_forward_grad */
};

/* step of x[lo..hi) into y[0..hi−lo) (y: the output's storage, or a block buffer) */
static void step_block(const struct ew_ctx *k, int64_t lo, int64_t hi, void *out) {
#ifndef HTAF_F64
    if (k->dt != DT_NATIVE) {   /* 16-bit types: decide on the bits, no conversion */
        const uint16_t *x = (const uint16_t *)k->x + lo;
        uint16_t *y = (uint16_t *)out;
        const uint16_t inf = k->dt == DT_F16 ? 0x7c00u : 0x7f80u;
        const uint16_t one = k->dt == DT_F16 ? 0x3c00u : 0x3f80u;
        const uint16_t off = k->signed_ ? (uint16_t)(one | 0x8000u) : 0;
        for (int64_t j = 0; j < hi - lo; ++j) {
            uint16_t h = x[j], mag = h & 0x7fffu;
            uint16_t v = h > 0x8000u ? off : one;              /* −0 (0x8000) counts as 0: on */
            y[j] = mag > inf ? h : v;                          /* NaN stays (same bits) */
        }
        return;
    }
#endif
    const real low = k->signed_ ? -1 : 0;
    const real *x = (const real *)k->x + lo;
    real *y = (real *)out;
    for (int64_t j = 0; j < hi - lo; ++j) {
        real v = x[j];
        y[j] = v >= 0 ? 1 : (v != v ? v : low);
    }
}

static void step_range(void *p, int64_t lo, int64_t hi) {
    const struct ew_ctx *k = (const struct ew_ctx *)p;
    const size_t size = k->dt == DT_NATIVE ? sizeof(real) : 2;
    if (!k->stream) {
        step_block(k, lo, hi, (char *)k->out + lo * size);
        return;
    }
    real buf[BLK];
    for (int64_t i = lo; i < hi; i += BLK) {
        int64_t n = hi - i < BLK ? hi - i : BLK;
        step_block(k, i, i + n, buf);
        stream_copy((char *)k->out + i * size, buf, (size_t)n * size);
    }
    stream_fence(1);
}

static void forward_range(void *p, int64_t lo, int64_t hi) {
    const struct ew_ctx *k = (const struct ew_ctx *)p;
    real xb[BLK], yb[BLK];
    struct htaf_parts h;
    for (int64_t i = lo; i < hi; i += BLK) {
        int64_t n = hi - i < BLK ? hi - i : BLK;
        const real *restrict x = view_in(k->dt, k->x, i, xb, n);
        real *restrict y = view_out(k->dt, 0, k->out, i, yb);
        htaf_stages(x, &k->hk, n, &h);
        htaf_finish(&h, n, NULL, y, NULL, k->stream);
        flush_out(k->dt, 0, yb, k->out, i, n);
    }
    stream_fence(k->stream);
}

static void forward_grad_range(void *p, int64_t lo, int64_t hi) {
    const struct ew_ctx *k = (const struct ew_ctx *)p;
    real xb[BLK], yb[BLK], db[BLK];
    struct htaf_parts h;
    for (int64_t i = lo; i < hi; i += BLK) {
        int64_t n = hi - i < BLK ? hi - i : BLK;
        const real *restrict x = view_in(k->dt, k->x, i, xb, n);
        real *restrict y = view_out(k->dt, 0, k->out, i, yb);
        real *restrict d = view_out(k->dt, 0, k->g_out, i, db);
        htaf_stages(x, &k->hk, n, &h);
        htaf_finish(&h, n, NULL, y, d, k->stream);
        flush_out(k->dt, 0, yb, k->out, i, n);
        flush_out(k->dt, 0, db, k->g_out, i, n);
    }
    stream_fence(k->stream);
}

static void backward_range(void *p, int64_t lo, int64_t hi) {
    const struct ew_ctx *k = (const struct ew_ctx *)p;
    real xb[BLK], gb[BLK], ob[BLK];
    for (int64_t i = lo; i < hi; i += BLK) {
        int64_t n = hi - i < BLK ? hi - i : BLK;
        const real *x = view_in(k->dt, k->x, i, xb, n);
        const real *g = view_in(k->dt, k->g, i, gb, n);
        const int buffered = k->stream && k->kind != 0;   /* HTAF streams from registers */
        real *o = view_out(k->dt, buffered, k->out, i, ob);
        surrogate_block(k->kind, k->c, k->scale, x, g, o, n, k->stream);
        flush_out(k->dt, buffered, ob, k->out, i, n);
    }
    stream_fence(k->stream);
}

static void mul_range(void *p, int64_t lo, int64_t hi) {
    const struct ew_ctx *k = (const struct ew_ctx *)p;
    real ob[BLK];
    for (int64_t i = lo; i < hi; i += BLK) {
        int64_t n = hi - i < BLK ? hi - i : BLK;
        const real *restrict a = (const real *)k->x + i, *restrict b = (const real *)k->g + i;
        real *restrict o = view_out(DT_NATIVE, k->stream, k->out, i, ob);
        for (int64_t j = 0; j < n; ++j) o[j] = a[j] * b[j];
        flush_out(DT_NATIVE, k->stream, ob, k->out, i, n);
    }
    stream_fence(k->stream);
}

/* Grains: the fewest elements worth a thread of their own, about 100 µs of work (creating and
 * joining a thread costs 24–80 µs here): 2^15 for HTAF's two exponentials and two divisions
 * (≈2.5 ns an element on one Zen 3 core), 2^16 for one exponential, 2^18 for the rest, which
 * move memory more than they compute. */
#define GRAIN_STEP (1 << 18)
#define GRAIN_MATH (1 << 15)

static int64_t grain_of(int kind) {
    switch (kind) {
    case 0: case 12: return GRAIN_MATH;           /* htaf, swish_sign */
    case 1: case 6: case 7: return GRAIN_MATH * 2; /* sigmoid, piecewise_exp, erf */
    default: return GRAIN_STEP;
    }
}

void htaf_step(const void *x, void *y, int64_t n, int dt, int signed_, int nthreads) {
    struct ew_ctx k = {.x = x, .out = y, .dt = dt, .signed_ = signed_, .stream = streams(n, dt)};
    parallel_for(step_range, &k, n, GRAIN_STEP, 64, nthreads);
}

void htaf_forward(const void *x, void *y, int64_t n, int dt, double a, double b, double g,
                  int nthreads) {
    struct ew_ctx k = {.x = x, .out = y, .dt = dt, .stream = htaf_streams(n, dt),
                       .hk = htaf_constants(a, b, g, 1)};
    parallel_for(forward_range, &k, n, GRAIN_MATH, 64, nthreads);
}

/* y = HTAF(x) and d = scale·HTAF'(x) in one pass: the smooth mode's forward on the CPU, where
 * the two exponentials and two divisions per element, not memory, bound the time; the backward
 * is then grad·d, and smooth HTAF evaluates them once per element instead of twice. */
void htaf_forward_grad(const void *x, void *y, void *d, int64_t n, int dt, double a, double b,
                       double g, double scale, int nthreads) {
    struct ew_ctx k = {.x = x, .out = y, .g_out = d, .dt = dt, .stream = htaf_streams(n, dt),
                       .hk = htaf_constants(a, b, g, scale)};
    parallel_for(forward_grad_range, &k, n, GRAIN_MATH, 64, nthreads);
}

/* out = grad·scale·g'(x) for surrogate `kind` with constants c0..c2 */
void htaf_surrogate_backward(const void *grad, const void *x, void *out, int64_t n, int dt,
                             int kind, double c0, double c1, double c2, double scale,
                             int nthreads) {
    struct ew_ctx k = {.x = x, .g = grad, .out = out, .dt = dt, .kind = kind,
                       .stream = kind == 0 ? htaf_streams(n, dt)
                                 : grain_of(kind) != GRAIN_MATH && streams(n, dt),
                       .c = {(real)c0, (real)c1, (real)c2},
                       .scale = (real)scale};
    parallel_for(backward_range, &k, n, grain_of(kind), 64, nthreads);
}

/* out = a·b (reals only): smooth HTAF's backward, grad·d, streamed when large */
void htaf_mul(const void *a, const void *b, void *out, int64_t n, int nthreads) {
    struct ew_ctx k = {.x = a, .g = b, .out = out, .dt = DT_NATIVE,
                       .stream = streams(n, DT_NATIVE)};
    parallel_for(mul_range, &k, n, GRAIN_STEP, 64, nthreads);
}

/* --------------------------------------------------------------------- multi-step LIF */
/* H[t] = charge(V[t−1], X[t]); S[t] = 1[H[t] − V_th >= 0] (NaN stays NaN); V[t] = reset.
 * Neurons are processed in blocks of B with the time loop inside (V in L1).  The backward
 * recomputes H[0..T−1] of a block into a [T, B] buffer from X (the only saved sequence), then
 * runs BPTT in reverse time.  B = lif_block(T): up to 2048 neurons, so that each row access is a
 * long contiguous stream (the rows of X, dL/dS and dL/dX are N apart), but the [T, B] buffer
 * stays within 64 KiB (L2) for long sequences.  B depends on T only, so do the blocks of dL/dk.
 *
 * The neuron's variants (IF / LIF with or without decay_input, hard / soft reset, detach_reset)
 * are compile-time constants of always-inlined loop bodies, one instance per variant, chosen
 * outside the loops: with run-time flags inside, gcc turns the selects into masked stores
 * (vmaskmovps), which are microcoded and slow on AMD CPUs (6x slower backward). */
#define LIF_BLOCK_MAX 2048
#define INLINE static inline __attribute__((always_inline))

enum { CHARGE_IF = 0, CHARGE_DECAY = 1, CHARGE_NODECAY = 2 };   /* charge variant */
enum { ROW_SPIKES = 0, ROW_H = 1, ROW_H_DK = 2 };                /* what a step row writes */

struct lif_ctx {
    const void *x, *v0, *gs, *gv;
    void *s, *v_last, *gx, *gv0;
    double *gk_blocks;
    int *failed;
    int64_t T, N;
    int dt, charge, hard, detach, kind;
    real k, v_th, v_reset, c[3], scale;
};

/* One time step of n neurons: V ← reset(H), H = charge(V, X); writes S (ROW_SPIKES) or H, and
 * ∂H/∂k (ROW_H_DK) into `out`/`dk`. */
INLINE void lif_step_row(const int charge, const int hard, const int what, real k, real r,
                         real vth, real vr, real *restrict v, const real *restrict x,
                         real *restrict out, real *restrict dk, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        real vj = v[j], xj = x[j];
        real h = charge == CHARGE_IF ? vj + xj
                 : charge == CHARGE_DECAY ? vj + (xj - (vj - r)) * k : vj - (vj - r) * k + xj;
        real u = h - vth;
        real sp = u >= 0 ? 1 : (u != u ? u : 0);
        out[j] = what == ROW_SPIKES ? sp : h;
        if (what == ROW_H_DK) dk[j] = charge == CHARGE_DECAY ? xj - (vj - r) : r - vj;
        v[j] = hard ? h * (1 - sp) + vr * sp : h - vth * sp;
    }
}

static void lif_row(const struct lif_ctx *c, int what, real *v, const real *x, real *out,
                    real *dk, int64_t n) {
    const real r = c->hard ? c->v_reset : 0;
#define ROW(CH, HARD, WHAT) lif_step_row(CH, HARD, WHAT, c->k, r, c->v_th, c->v_reset, v, x, out, dk, n)
#define ROWS(CH, HARD)                                                                     \
    if (what == ROW_SPIKES) ROW(CH, HARD, ROW_SPIKES);                                     \
    else if (what == ROW_H) ROW(CH, HARD, ROW_H);                                          \
    else ROW(CH, HARD, ROW_H_DK);
    switch (c->charge * 2 + c->hard) {
    case 0: ROWS(CHARGE_IF, 0) break;       case 1: ROWS(CHARGE_IF, 1) break;
    case 2: ROWS(CHARGE_DECAY, 0) break;    case 3: ROWS(CHARGE_DECAY, 1) break;
    case 4: ROWS(CHARGE_NODECAY, 0) break;  default: ROWS(CHARGE_NODECAY, 1) break;
    }
#undef ROWS
#undef ROW
}

/* One reverse step of n neurons: from dL/dS[t] (gs), dL/dV[t] (gv, updated to dL/dV[t−1]) and
 * the surrogate derivative sg at H[t] − V_th, writes dL/dX[t] (gx) and dL/dH[t] (gh). */
INLINE void lif_bptt_row(const int hard, const int detach, real vth, real vr, real dx_dh,
                         real dv_dh, const real *restrict h, const real *restrict sg,
                         const real *restrict gs, real *restrict gv, real *restrict gx,
                         real *restrict gh, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        real u = h[j] - vth;
        real sp = u >= 0 ? 1 : (u != u ? u : 0);
        real through = detach ? 0 : sg[j];
        real dvdh = hard ? (1 - sp) + (vr - h[j]) * through : 1 - vth * through;
        real ghj = gs[j] * sg[j] + gv[j] * dvdh;
        gh[j] = ghj;
        gx[j] = ghj * dx_dh;
        gv[j] = ghj * dv_dh;
    }
}

static void lif_bptt(const struct lif_ctx *c, real dx_dh, real dv_dh, const real *h,
                     const real *sg, const real *gs, real *gv, real *gx, real *gh, int64_t n) {
#define BPTT(HARD, DETACH) lif_bptt_row(HARD, DETACH, c->v_th, c->v_reset, dx_dh, dv_dh, h, sg, gs, gv, gx, gh, n)
    switch (c->hard * 2 + c->detach) {
    case 0: BPTT(0, 0); break;  case 1: BPTT(0, 1); break;
    case 2: BPTT(1, 0); break;  default: BPTT(1, 1); break;
    }
#undef BPTT
}

/* neurons per block: a power of two in [64, 2048], T·B <= 16384 where possible */
static int64_t lif_block(int64_t T) {
    int64_t b = LIF_BLOCK_MAX;
    while (b > 64 && b * T > 16384) b /= 2;
    return b;
}

static void lif_fwd_range(void *p, int64_t lo, int64_t hi) {
    const struct lif_ctx *c = (const struct lif_ctx *)p;
    const int64_t B = lif_block(c->T);
    real *work = (real *)malloc(3 * (size_t)B * sizeof(real));
    if (!work) { __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED); return; }
    real *v = work, *xb = work + B, *sb = work + 2 * B;
    for (int64_t j0 = lo; j0 < hi; j0 += B) {
        int64_t n = hi - j0 < B ? hi - j0 : B;
        load_block(c->dt, c->v0, j0, v, n);
        for (int64_t t = 0; t < c->T; ++t) {
            const int64_t off = t * c->N + j0;
            const real *x = view_in(c->dt, c->x, off, xb, n);
            real *s = view_out(c->dt, 0, c->s, off, sb);
            lif_row(c, ROW_SPIKES, v, x, s, NULL, n);
            flush_out(c->dt, 0, sb, c->s, off, n);
        }
        store_block(c->dt, v, c->v_last, j0, n);
    }
    free(work);
}

static int charge_mode(int leaky, int decay) {
    return !leaky ? CHARGE_IF : decay ? CHARGE_DECAY : CHARGE_NODECAY;
}

/* neurons per thread at least: about GRAIN_MATH elements of work */
static int64_t lif_grain(int64_t T) { return GRAIN_MATH / (T > 0 ? T : 1) + 1; }

/* Forward.  Returns 0, or −1 when a work buffer could not be allocated. */
int htaf_lif_forward(const void *x, const void *v0, void *s, void *v_last, int64_t T, int64_t N,
                     int dt, double k, double v_th, double v_reset, int hard, int leaky,
                     int decay, int nthreads) {
    int failed = 0;
    struct lif_ctx c = {.x = x, .v0 = v0, .s = s, .v_last = v_last, .failed = &failed, .T = T,
                        .N = N, .dt = dt, .charge = charge_mode(leaky, decay), .hard = hard,
                        .k = (real)k, .v_th = (real)v_th, .v_reset = (real)v_reset};
    parallel_for(lif_fwd_range, &c, N, lif_grain(T), lif_block(T), nthreads);
    return failed ? -1 : 0;
}

static void lif_bwd_range(void *p, int64_t lo, int64_t hi) {
    const struct lif_ctx *c = (const struct lif_ctx *)p;
    const int64_t T = c->T, N = c->N;
    const int need_gk = c->gk_blocks != NULL;
    const real k = c->k;
    const real dx_dh = c->charge == CHARGE_DECAY ? k : 1, dv_dh = c->charge == CHARGE_IF ? 1 : 1 - k;
    const int64_t B = lif_block(T);
    /* per block: H[t] (T·B), ∂H[t]/∂k when dL/dk is wanted (T·B), eight rows of B, dL/dk lanes */
    const size_t rows = (size_t)T * B * (need_gk ? 2 : 1) + 8 * (size_t)B;
    double *gk = (double *)malloc(rows * sizeof(real) + (size_t)B * sizeof(double));
    if (!gk) { __atomic_store_n(c->failed, 1, __ATOMIC_RELAXED); return; }
    real *hbuf = (real *)(gk + B);
    real *dkbuf = need_gk ? hbuf + T * B : NULL;
    real *v = hbuf + T * B * (need_gk ? 2 : 1), *gv = v + B, *sg = gv + B, *u = sg + B;
    real *xb = u + B, *gb = xb + B, *ob = gb + B, *gh = ob + B;
    for (int64_t j0 = lo; j0 < hi; j0 += B) {
        int64_t n = hi - j0 < B ? hi - j0 : B;
        /* 1) recompute H (and ∂H/∂k) from X */
        load_block(c->dt, c->v0, j0, v, n);
        for (int64_t t = 0; t < T; ++t) {
            const real *x = view_in(c->dt, c->x, t * N + j0, xb, n);
            lif_row(c, need_gk ? ROW_H_DK : ROW_H, v, x, hbuf + t * B,
                    need_gk ? dkbuf + t * B : NULL, n);
        }
        /* 2) reverse time: gv = dL/dV[t], gh = dL/dH[t] */
        load_block(c->dt, c->gv, j0, gv, n);
        if (need_gk)
            for (int64_t j = 0; j < n; ++j) gk[j] = 0;
        for (int64_t t = T - 1; t >= 0; --t) {
            const real *restrict h = hbuf + t * B;
            for (int64_t j = 0; j < n; ++j) u[j] = h[j] - c->v_th;
            surrogate_block(c->kind, c->c, c->scale, u, NULL, sg, n, 0);
            const int64_t off = t * N + j0;
            const real *gs = view_in(c->dt, c->gs, off, gb, n);
            real *gx = view_out(c->dt, 0, c->gx, off, ob);
            lif_bptt(c, dx_dh, dv_dh, h, sg, gs, gv, gx, gh, n);
            flush_out(c->dt, 0, ob, c->gx, off, n);
            if (need_gk) {   /* dL/dk = Σ_t Σ_j dL/dH[t]·∂H[t]/∂k, in float64 */
                const real *restrict dk = dkbuf + t * B;
                for (int64_t j = 0; j < n; ++j) gk[j] += (double)gh[j] * (double)dk[j];
            }
        }
        store_block(c->dt, gv, c->gv0, j0, n);
        if (need_gk) {
            double sum = 0;
            for (int64_t j = 0; j < n; ++j) sum += gk[j];
            c->gk_blocks[j0 / B] = sum;
        }
    }
    free(gk);
}

/* BPTT.  Returns 0, or −1 when a work buffer could not be allocated. */
int htaf_lif_backward(const void *gs, const void *gv_last, const void *x, const void *v0,
                      void *gx, void *gv0, double *gk, int64_t T, int64_t N, int dt, double k,
                      double v_th, double v_reset, int hard, int leaky, int decay, int detach,
                      int kind, double c0, double c1, double c2, double scale, int need_gk,
                      int nthreads) {
    int64_t blocks = (N + lif_block(T) - 1) / lif_block(T);
    double *parts = NULL;
    int failed = 0;
    if (need_gk && !(parts = (double *)calloc((size_t)(blocks > 0 ? blocks : 1), sizeof(double))))
        return -1;
    struct lif_ctx c = {.x = x, .v0 = v0, .gs = gs, .gv = gv_last, .gx = gx, .gv0 = gv0,
                        .gk_blocks = parts, .failed = &failed, .T = T, .N = N, .dt = dt,
                        .charge = charge_mode(leaky, decay), .hard = hard, .detach = detach,
                        .kind = kind, .k = (real)k, .v_th = (real)v_th,
                        .v_reset = (real)v_reset, .c = {(real)c0, (real)c1, (real)c2},
                        .scale = (real)scale};
    parallel_for(lif_bwd_range, &c, N, lif_grain(T), lif_block(T), nthreads);
    if (need_gk) {
        double sum = 0;
        for (int64_t i = 0; i < blocks; ++i) sum += parts[i];   /* fixed order: thread-count free */
        free(parts);
        *gk = sum;
    }
    return failed ? -1 : 0;
}
