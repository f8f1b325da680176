/* Packed binary convolution (XOR + popcount) for htaf.deploy, loaded with ctypes.

   Bits: 1 = +1, 0 = -1; a pixel's C channels are packed into Cw = ceil(C/64) little-endian
   64-bit words, unused high bits zero. A convolution over such pixels, for output channel o:

       dot = n - 2 * popcount(row XOR w_o),    n = kh*kw*C

   where `row` is the output pixel's receptive field (kh*kw taps of Cw words each, gathered by
   im2col into a contiguous buffer). Padded taps hold bit 0 (-1) or, for pad_value +1, bit 1;
   for true zero padding (pad_value 0) the -sum_c w[o, c, tap] that a bit-0 tap contributed is
   added back from `wsum`, so `dot` is the exact integer the float convolution computes.

   Layout of the work: output pixels are processed in blocks of 64 rows (im2col once a block),
   output channels 32 (AVX2) or 8 at a time, the block's rows streaming past a weight panel
   that stays in L1, with a fused epilogue per window of `pool` x `pool` output pixels:

     mode 0  float NCHW:  y = (float)max(dot) * alpha[o] + bias[o]   (the layer's own order)
     mode 1  packed bits: bit o of the pooled pixel = (max(dot) >= thr[o]) XOR flip[o]
     mode 2  int32:       max(dot)

   (max over the window commutes with y = d*alpha + b for alpha >= 0, and with the threshold
   test, so pooling on the integers is exact.) Threads take (row block, channel chunk) tasks.

   Three interchangeable microkernels, chosen at run time from the CPU's flags (or forced):
     ISA_AVX2    nibble lookup with vpshufb on operands pre-split into low/high nibbles,
                 32 output channels at a time: each activation word is broadcast and XORed
                 with 4 channels' words per register, so per 256 bit-pairs 2 vpxor +
                 2 vpshufb + 2 vpaddb into byte counters, and one vpsadbw at the end yields
                 4 channels' counts (counters flushed every <= 31 words)
     ISA_POPCNT  64-bit XOR + hardware popcnt, 8 output channels per loaded activation word
     ISA_GENERIC the same loop in portable C (compiler's popcount)
   All produce the same integers. Compile with -ffp-contract=off: the float epilogue must round
   after the multiply and after the add, as PyTorch's two elementwise ops do. */

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HTAF_X86 1
#include <immintrin.h>
#endif

enum { ISA_GENERIC = 0, ISA_POPCNT = 1, ISA_AVX2 = 2 };
#define ROWS_PER_BLOCK 64   /* output pixels im2col'd together */
#define AVX2_MAX_WORDS 31   /* byte counters grow <= 8 a word: flush before 256 */

int htaf_isa_supported(int64_t isa) {
    if (isa == ISA_GENERIC) return 1;
#ifdef HTAF_X86
    __builtin_cpu_init();
    if (isa == ISA_POPCNT) return __builtin_cpu_supports("popcnt") != 0;
    if (isa == ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#endif
    return 0;
}

int htaf_best_isa(void) {
    for (int isa = ISA_AVX2; isa > ISA_GENERIC; --isa)
        if (htaf_isa_supported(isa)) return isa;
    return ISA_GENERIC;
}

/* ------------------------------------------------------------------------------------------
   Threads. Built with -fopenmp (the default), parallel parts run on OpenMP threads: loaded
   into a PyTorch process, `libgomp.so.1` resolves to the copy PyTorch already loaded, so the
   kernel and PyTorch share one pool of threads. (A second pool fights PyTorch's threads, which
   spin for a while after each of its parallel regions: on 2 cores that cost 5x.) Without
   OpenMP, a small persistent pthread pool: the caller runs part 0, workers the others. */
typedef void (*task_fn)(void *ctx, int part);

#ifdef _OPENMP
#include <omp.h>

static void pool_run(int parts, task_fn fn, void *ctx) {
    if (parts <= 1) { fn(ctx, 0); return; }
#pragma omp parallel num_threads(parts)
    {
        const int n = omp_get_num_threads();
        for (int i = omp_get_thread_num(); i < parts; i += n) fn(ctx, i);
    }
}

int htaf_threading(void) { return 1; }  /* 1: OpenMP, 0: pthread pool */
#else
#define MAX_WORKERS 255

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pid_t pid;            /* the process that created the workers (a forked child has none) */
    int workers;          /* started so far */
    long gen;             /* dispatch counter */
    int parts, pending;
    task_fn fn;
    void *ctx;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0,
           NULL, NULL};

typedef struct { int id; long gen0; } worker_arg;

static void *pool_worker(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    long seen = arg.gen0;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (pool.gen == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        seen = pool.gen;
        if (arg.id < pool.parts) {
            task_fn fn = pool.fn;
            void *ctx = pool.ctx;
            pthread_mutex_unlock(&pool.mu);
            fn(ctx, arg.id);
            pthread_mutex_lock(&pool.mu);
            if (--pool.pending == 0) pthread_cond_signal(&pool.done);
        }
    }
    return NULL;
}

/* Run fn(ctx, 0..parts-1) on `parts` threads. One parallel run at a time: a caller that finds
   the pool busy (another Python thread is in a kernel) runs every part itself, in order. */
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;

/* fork() waits for a running dispatch; the child starts without workers (see pool.pid). */
static void fork_prepare(void) { pthread_mutex_lock(&pool_busy); pthread_mutex_lock(&pool.mu); }
static void fork_after(void) { pthread_mutex_unlock(&pool.mu); pthread_mutex_unlock(&pool_busy); }
__attribute__((constructor)) static void pool_init(void) {
    pthread_atfork(fork_prepare, fork_after, fork_after);
}

static void pool_run(int parts, task_fn fn, void *ctx) {
    if (parts > MAX_WORKERS + 1) parts = MAX_WORKERS + 1;
    if (parts <= 1 || pthread_mutex_trylock(&pool_busy) != 0) {
        for (int i = 0; i < (parts < 1 ? 1 : parts); ++i) fn(ctx, i);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    if (pool.pid != getpid()) {   /* first use, or a forked child: its workers do not exist */
        pool.pid = getpid();
        pool.workers = 0;
    }
    while (pool.workers < parts - 1) {
        worker_arg *arg = malloc(sizeof *arg);
        pthread_t t;
        if (!arg) break;
        arg->id = pool.workers + 1;
        arg->gen0 = pool.gen;
        if (pthread_create(&t, NULL, pool_worker, arg) != 0) { free(arg); break; }
        pthread_detach(t);
        pool.workers++;
    }
    if (parts > pool.workers + 1) parts = pool.workers + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.parts = parts;
    pool.pending = parts - 1;
    pool.gen++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    fn(ctx, 0);
    pthread_mutex_lock(&pool.mu);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool_busy);
}

int htaf_threading(void) { return 0; }
#endif

/* ------------------------------------------------------------------------------------------
   The convolution's arguments (mirrored by a ctypes.Structure in htaf/_native.py). */
typedef struct {
    const uint64_t *x;                 /* [B, H, W, Cw] packed input */
    int64_t B, H, W, C, Cw;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t pad_ones;                  /* padded taps hold +1 (bit 1) instead of -1 (bit 0) */
    int64_t zero_pad;                  /* pad_value 0: add back wsum of the padded taps */
    int64_t O, O8, K;                  /* O8 = ceil(O/8); K = kh*kw*Cw words */
    const uint64_t *wpanel;            /* scalar panel [O8][K][8] words */
    const uint8_t *wsplit;             /* AVX2 panel [ceil(O/32)][K][lo, hi][8][4 ch][8 B] */
    const int32_t *wsum;               /* [O8][kh*kw][8]: sum_c w_b[o, c, tap] (zero_pad) */
    int64_t n;                         /* kh*kw*C */
    int64_t pool;                      /* max-pool window = stride, 1 for none */
    int64_t mode;                      /* 0 float NCHW, 1 packed bits, 2 int32 */
    const float *alpha, *bias;         /* [O] or NULL (mode 0) */
    const int32_t *thr, *flip;         /* [O8*8] (mode 1; padding channels give bit 0) */
    void *out;
    int64_t out_bytes;                 /* bytes per output pixel in mode 1 (8 * words) */
    int64_t nthreads, isa;
} bconv_t;

typedef struct {
    const bconv_t *p;
    int64_t HO, WO, PH, PW, windows, win_per_block, blocks, chunks, o8_per_chunk, tasks;
    int64_t next;                      /* task counter (atomic) */
    int failed;
} conv_job;

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Gather one output pixel's receptive field into `row` (K words); return the bit mask of
   padded taps (kernels of more than 64 taps have no padding). */
static inline uint64_t im2col_row(const bconv_t *p, int64_t b, int64_t y, int64_t x,
                                  const uint64_t *padtap, uint64_t *row) {
    const int64_t Cw = p->Cw;
    uint64_t mask = 0;
    int64_t t = 0;
    for (int64_t i = 0; i < p->kh; ++i) {
        const int64_t iy = y * p->sh - p->ph + i * p->dh;
        for (int64_t j = 0; j < p->kw; ++j, ++t) {
            const int64_t ix = x * p->sw - p->pw + j * p->dw;
            uint64_t *dst = row + t * Cw;
            const uint64_t *src;
            if (iy >= 0 && iy < p->H && ix >= 0 && ix < p->W) {
                src = p->x + ((b * p->H + iy) * p->W + ix) * Cw;
            } else {
                src = padtap;
                mask |= (uint64_t)1 << t;
            }
            for (int64_t c = 0; c < Cw; ++c) dst[c] = src[c];
        }
    }
    return mask;
}

/* The window's conv output pixel for row r of block window w. */
static inline void row_pixel(const conv_job *job, int64_t w, int64_t r, int64_t *b, int64_t *y,
                             int64_t *x) {
    const int64_t P = job->p->pool;
    const int64_t px = w % job->PW, py = (w / job->PW) % job->PH;
    *b = w / (job->PW * job->PH);
    *y = py * P + r / P;
    *x = px * P + r % P;
}

/* Epilogue of the word microkernels for one channel group (8 channels, o = 8*o8 + j) and `nw`
   windows whose rows' counts are in cnt [rows][8]. (The AVX2 driver has its own, in registers.) */
static inline void epilogue(const conv_job *job, int64_t w0, int64_t nw, int64_t o8,
                            const int32_t *cnt, const uint64_t *masks) {
    const bconv_t *p = job->p;
    const int64_t P2 = p->pool * p->pool, T = p->kh * p->kw;
    const int32_t n = (int32_t)p->n;
    for (int64_t wi = 0; wi < nw; ++wi) {
        int32_t best[8];
        for (int j = 0; j < 8; ++j) best[j] = INT32_MIN;
        for (int64_t r = 0; r < P2; ++r) {
            const int32_t *c = cnt + (wi * P2 + r) * 8;
            int32_t d[8];
            for (int j = 0; j < 8; ++j) d[j] = n - 2 * c[j];
            uint64_t m = p->zero_pad ? masks[wi * P2 + r] : 0;
            while (m) {
                const int t = __builtin_ctzll(m);
                const int32_t *ws = p->wsum + (o8 * T + t) * 8;
                for (int j = 0; j < 8; ++j) d[j] += ws[j];
                m &= m - 1;
            }
            for (int j = 0; j < 8; ++j) best[j] = d[j] > best[j] ? d[j] : best[j];
        }
        const int64_t w = w0 + wi;
        const int64_t o0 = o8 * 8;
        if (p->mode == 1) {
            unsigned byte = 0;
            for (int j = 0; j < 8; ++j)
                byte |= (unsigned)((best[j] >= p->thr[o0 + j]) ^ p->flip[o0 + j]) << j;
            ((uint8_t *)p->out)[w * p->out_bytes + o8] = (uint8_t)byte;
        } else if (p->mode == 0) {
            const int64_t HWp = job->PH * job->PW, b = w / HWp, pix = w % HWp;
            float *out = (float *)p->out + (b * p->O + o0) * HWp + pix;
            const int jn = (int)min64(8, p->O - o0);
            for (int j = 0; j < jn; ++j) {
                float v = (float)best[j];
                if (p->alpha) v = v * p->alpha[o0 + j];
                if (p->bias) v = v + p->bias[o0 + j];
                out[j * HWp] = v;
            }
        } else {
            int32_t *out = (int32_t *)p->out + w * p->O + o0;
            const int jn = (int)min64(8, p->O - o0);
            for (int j = 0; j < jn; ++j) out[j] = best[j];
        }
    }
}

/* ---- microkernels: counts of one im2col row against an 8-channel weight panel ---------- */
static inline __attribute__((always_inline)) void mk_words(const uint64_t *a, const uint64_t *w,
                                                           int64_t K, int32_t *cnt) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (int64_t k = 0; k < K; ++k, w += 8) {
        const uint64_t v = a[k];
        s0 += (uint64_t)__builtin_popcountll(v ^ w[0]);
        s1 += (uint64_t)__builtin_popcountll(v ^ w[1]);
        s2 += (uint64_t)__builtin_popcountll(v ^ w[2]);
        s3 += (uint64_t)__builtin_popcountll(v ^ w[3]);
        s4 += (uint64_t)__builtin_popcountll(v ^ w[4]);
        s5 += (uint64_t)__builtin_popcountll(v ^ w[5]);
        s6 += (uint64_t)__builtin_popcountll(v ^ w[6]);
        s7 += (uint64_t)__builtin_popcountll(v ^ w[7]);
    }
    cnt[0] = (int32_t)s0; cnt[1] = (int32_t)s1; cnt[2] = (int32_t)s2; cnt[3] = (int32_t)s3;
    cnt[4] = (int32_t)s4; cnt[5] = (int32_t)s5; cnt[6] = (int32_t)s6; cnt[7] = (int32_t)s7;
}

#ifdef HTAF_X86
/* Sum the bytes of each of 8 accumulators: lane j of the result = sum of bytes of c_j. */
__attribute__((target("avx2"))) static inline __m256i reduce8(__m256i c0, __m256i c1, __m256i c2,
                                                              __m256i c3, __m256i c4, __m256i c5,
                                                              __m256i c6, __m256i c7) {
    const __m256i z = _mm256_setzero_si256();
    /* vpsadbw: 4 qword partial sums (< 2^16) per accumulator; pair them into dwords */
    __m256i x01 = _mm256_or_si256(_mm256_sad_epu8(c0, z), _mm256_slli_epi64(_mm256_sad_epu8(c1, z), 32));
    __m256i x23 = _mm256_or_si256(_mm256_sad_epu8(c2, z), _mm256_slli_epi64(_mm256_sad_epu8(c3, z), 32));
    __m256i x45 = _mm256_or_si256(_mm256_sad_epu8(c4, z), _mm256_slli_epi64(_mm256_sad_epu8(c5, z), 32));
    __m256i x67 = _mm256_or_si256(_mm256_sad_epu8(c6, z), _mm256_slli_epi64(_mm256_sad_epu8(c7, z), 32));
    /* [c0 c1 c2 c3 | c0 c1 c2 c3] partial sums of qwords 0+1 and 2+3 */
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi64(x01, x23), _mm256_unpackhi_epi64(x01, x23));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi64(x45, x67), _mm256_unpackhi_epi64(x45, x67));
    return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20),
                            _mm256_permute2x128_si256(t0, t1, 0x31));
}

/* Counts of `nrows` im2col rows against 32 output channels. a: each row's K words as
   [K][lo, hi] nibble words (rows 2*K words apart); w: [K][lo, hi][8 registers][4 channels][8 B]
   (channel 4*j + q in qword q of register j). cnt[i*32 + o]: row i's count for channel o.
   K is walked in chunks of <= 31 words (before a byte counter can overflow), all rows a chunk:
   the chunk's weights (<= 16 KB) stay in L1 while the rows stream past. Not inlined: inside,
   only the 8 counters, the table and one operand are live in the hot loop, so none spills. */
__attribute__((target("avx2"), noinline)) static void mk_avx2(const uint64_t *a, int64_t nrows,
                                                              const uint8_t *w, int64_t K,
                                                              int32_t *cnt) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int64_t k0 = 0; k0 < K; k0 += AVX2_MAX_WORDS) {
        const int64_t k1 = min64(K, k0 + AVX2_MAX_WORDS);
        for (int64_t i = 0; i < nrows; ++i) {
            const uint64_t *ai = a + 2 * K * i;
            __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero,
                    c7 = zero;
            for (int64_t k = k0; k < k1; ++k) {
                const __m256i *ws = (const __m256i *)(w + 512 * k);
                /* low nibbles of the word against 32 channels, then the high ones */
                __m256i v = _mm256_set1_epi64x((long long)ai[2 * k]);
/* the empty asm pins each counter to a register: without it GCC reassociates the adds and
   spills counters to the stack */
#define HTAF_STEP(c, j)                                                                        \
    c = _mm256_add_epi8(c, _mm256_shuffle_epi8(lut, _mm256_xor_si256(v, _mm256_loadu_si256(ws + j)))); \
    __asm__("" : "+x"(c));
                HTAF_STEP(c0, 0) HTAF_STEP(c1, 1) HTAF_STEP(c2, 2) HTAF_STEP(c3, 3)
                HTAF_STEP(c4, 4) HTAF_STEP(c5, 5) HTAF_STEP(c6, 6) HTAF_STEP(c7, 7)
                v = _mm256_set1_epi64x((long long)ai[2 * k + 1]);
                HTAF_STEP(c0, 8) HTAF_STEP(c1, 9) HTAF_STEP(c2, 10) HTAF_STEP(c3, 11)
                HTAF_STEP(c4, 12) HTAF_STEP(c5, 13) HTAF_STEP(c6, 14) HTAF_STEP(c7, 15)
#undef HTAF_STEP
            }
            /* vpsadbw: qword q of register j = the count of channel 4*j + q (< 2^16);
               registers 2s, 2s+1 hold channels 8s..8s+3, 8s+4..8s+7: interleave their counts
               as 32-bit lanes and put them in channel order */
            const __m256i t[4] = {
                _mm256_or_si256(_mm256_sad_epu8(c0, zero), _mm256_slli_epi64(_mm256_sad_epu8(c1, zero), 32)),
                _mm256_or_si256(_mm256_sad_epu8(c2, zero), _mm256_slli_epi64(_mm256_sad_epu8(c3, zero), 32)),
                _mm256_or_si256(_mm256_sad_epu8(c4, zero), _mm256_slli_epi64(_mm256_sad_epu8(c5, zero), 32)),
                _mm256_or_si256(_mm256_sad_epu8(c6, zero), _mm256_slli_epi64(_mm256_sad_epu8(c7, zero), 32))};
            for (int sub = 0; sub < 4; ++sub) {
                __m256i *dst = (__m256i *)(cnt + 32 * i + 8 * sub);
                const __m256i v = _mm256_permutevar8x32_epi32(t[sub], order);
                _mm256_storeu_si256(dst, k0 ? _mm256_add_epi32(_mm256_loadu_si256(dst), v) : v);
            }
        }
    }
}

/* Low and high nibbles of each byte of a row's K words, as [K][lo, hi]. */
static inline void split_nibbles(const uint64_t *row, int64_t K, uint64_t *out) {
    const uint64_t m = 0x0F0F0F0F0F0F0F0Full;
    for (int64_t k = 0; k < K; ++k) {
        out[2 * k] = row[k] & m;
        out[2 * k + 1] = (row[k] >> 4) & m;
    }
}
#endif

/* ---- the driver: one task = one block of windows x one chunk of 8-channel groups -------- */
typedef struct {
    uint64_t *rows;     /* [rows][K] words */
    uint64_t *split;    /* [rows][K][lo, hi] nibble words (AVX2) */
    uint64_t *masks;    /* [rows] padded taps */
    int32_t *cnt;       /* [rows][8], AVX2: [rows][32] */
    uint64_t *padtap;   /* [Cw] the words of a padded tap */
    int64_t block;      /* the block whose rows are in `rows`, -1 none */
} scratch;

/* im2col the rows of block `blk` into the scratch (and split them into nibbles for AVX2). */
static inline __attribute__((always_inline)) int64_t load_block(conv_job *job, scratch *s,
                                                                int64_t blk, int split) {
    const bconv_t *p = job->p;
    const int64_t P2 = p->pool * p->pool, w0 = blk * job->win_per_block;
    const int64_t nrows = min64(job->win_per_block, job->windows - w0) * P2, Kr = p->K;
    if (s->block == blk) return nrows;
    for (int64_t i = 0; i < nrows; ++i) {
        int64_t b, y, x;
        row_pixel(job, w0 + i / P2, i % P2, &b, &y, &x);
        s->masks[i] = im2col_row(p, b, y, x, s->padtap, s->rows + i * Kr);
#ifdef HTAF_X86
        if (split) split_nibbles(s->rows + i * Kr, p->K, s->split + i * 2 * p->K);
#else
        (void)split;
#endif
    }
    s->block = blk;
    return nrows;
}

/* One task with the word microkernel (generic or popcnt): counts into s->cnt, then the plain
   C epilogue. */
static inline __attribute__((always_inline)) void run_task_words(conv_job *job, scratch *s,
                                                                 int64_t task) {
    const bconv_t *p = job->p;
    const int64_t blk = task / job->chunks, chunk = task % job->chunks;
    const int64_t nrows = load_block(job, s, blk, 0), Kr = p->K;
    const int64_t g0 = chunk * job->o8_per_chunk, g1 = min64(p->O8, g0 + job->o8_per_chunk);
    for (int64_t o8 = g0; o8 < g1; ++o8) {
        for (int64_t i = 0; i < nrows; ++i)
            mk_words(s->rows + i * Kr, p->wpanel + o8 * p->K * 8, p->K, s->cnt + i * 8);
        epilogue(job, blk * job->win_per_block, nrows / (p->pool * p->pool), o8, s->cnt, s->masks);
    }
}

#ifdef HTAF_X86
/* One task with the AVX2 microkernel; the epilogue stays in registers: n - 2*count (+ the
   zero-padding correction), max over the pooling window, then threshold bits, float or int. */
__attribute__((target("avx2,popcnt"))) static void run_task_avx2(conv_job *job, scratch *s,
                                                                 int64_t task) {
    const bconv_t *p = job->p;
    const int64_t blk = task / job->chunks, chunk = task % job->chunks;
    const int64_t P2 = p->pool * p->pool, T = p->kh * p->kw, HWp = job->PH * job->PW;
    const int64_t nrows = load_block(job, s, blk, 1), nw = nrows / P2;
    const int64_t w0 = blk * job->win_per_block;
    const int64_t g0 = chunk * job->o8_per_chunk, g1 = min64(p->O8, g0 + job->o8_per_chunk);
    const __m256i vn = _mm256_set1_epi32((int32_t)p->n), zero = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi32(-1);
    for (int64_t g = g0; g < g1; g += 4) {   /* 32 channels: 4 groups of 8 */
        const int64_t ng = min64(4, g1 - g);
        mk_avx2(s->split, nrows, p->wsplit + (g / 4) * p->K * 512, p->K, s->cnt);
        const int32_t *ws = p->wsum ? p->wsum + g * T * 8 : NULL;
        __m256i thr[4], keep[4];   /* keep = NOT flip: bit = (best >= thr) XOR flip */
        for (int64_t q = 0; q < ng; ++q) {
            thr[q] = keep[q] = zero;
            if (p->mode == 1) {
                thr[q] = _mm256_loadu_si256((const __m256i *)(p->thr + 8 * (g + q)));
                keep[q] = _mm256_xor_si256(ones, _mm256_sub_epi32(
                    zero, _mm256_loadu_si256((const __m256i *)(p->flip + 8 * (g + q)))));
            }
        }
        for (int64_t wi = 0; wi < nw; ++wi) {
            __m256i best[4];
            for (int q = 0; q < 4; ++q) best[q] = _mm256_set1_epi32(INT32_MIN);
            for (int64_t r = 0; r < P2; ++r) {
                /* n - 2*count, plus the zero-padding correction of each padded tap: one pass
                   over the row's padded taps for all 32 channels */
                const int64_t i = wi * P2 + r;
                __m256i d[4];
                for (int q = 0; q < 4; ++q) {
                    const __m256i c = _mm256_loadu_si256((const __m256i *)(s->cnt + 32 * i + 8 * q));
                    d[q] = _mm256_sub_epi32(vn, _mm256_add_epi32(c, c));
                }
                for (uint64_t m = p->zero_pad ? s->masks[i] : 0; m; m &= m - 1) {
                    const int32_t *wt = ws + 8 * __builtin_ctzll(m);
                    for (int64_t q = 0; q < ng; ++q)
                        d[q] = _mm256_add_epi32(d[q], _mm256_loadu_si256(
                            (const __m256i *)(wt + q * T * 8)));
                }
                for (int q = 0; q < 4; ++q) best[q] = _mm256_max_epi32(best[q], d[q]);
            }
            const int64_t w = w0 + wi;
            if (p->mode == 1) {
                uint8_t *out = (uint8_t *)p->out + w * p->out_bytes + g;
                for (int64_t q = 0; q < ng; ++q) {   /* cmpgt gives best < thr */
                    const __m256i bit = _mm256_xor_si256(_mm256_cmpgt_epi32(thr[q], best[q]),
                                                         keep[q]);
                    out[q] = (uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(bit));
                }
                continue;
            }
            for (int64_t q = 0; q < ng; ++q) {
                const int64_t o0 = 8 * (g + q);
                int32_t lane[8];
                _mm256_storeu_si256((__m256i *)lane, best[q]);
                const int jn = (int)min64(8, p->O - o0);
                if (p->mode == 0) {
                    float *out = (float *)p->out + ((w / HWp) * p->O + o0) * HWp + w % HWp;
                    for (int j = 0; j < jn; ++j) {
                        float v = (float)lane[j];
                        if (p->alpha) v = v * p->alpha[o0 + j];
                        if (p->bias) v = v + p->bias[o0 + j];
                        out[j * HWp] = v;
                    }
                } else {
                    int32_t *out = (int32_t *)p->out + w * p->O + o0;
                    for (int j = 0; j < jn; ++j) out[j] = lane[j];
                }
            }
        }
    }
}
#endif

/* Scratch memory: one grow-only buffer per thread (freed when the thread exits), so a call
   does not pay for five allocations. */
static pthread_key_t arena_key;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;
typedef struct { void *buf; size_t size; } arena_t;

static void arena_free(void *a) {
    if (a) { free(((arena_t *)a)->buf); free(a); }
}
static void arena_init(void) { pthread_key_create(&arena_key, arena_free); }

static void *arena_get(size_t need) {
    pthread_once(&arena_once, arena_init);
    arena_t *a = pthread_getspecific(arena_key);
    if (!a) {
        if (!(a = calloc(1, sizeof *a))) return NULL;
        pthread_setspecific(arena_key, a);
    }
    if (a->size < need) {
        free(a->buf);
        a->buf = NULL;
        a->size = 0;
        if (posix_memalign(&a->buf, 64, need)) { a->buf = NULL; return NULL; }
        a->size = need;
    }
    return a->buf;
}

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

static int scratch_alloc(scratch *s, const bconv_t *p, int64_t rows) {
    memset(s, 0, sizeof *s);
    s->block = -1;
    const size_t sz_rows = up64((size_t)rows * p->K * 8), sz_split = up64((size_t)rows * p->K * 16);
    const size_t sz_cnt = up64((size_t)rows * 32 * 4), sz_masks = up64((size_t)rows * 8);
    const size_t sz_pad = up64((size_t)(p->Cw + 1) * 8);
    char *m = arena_get(sz_rows + sz_split + sz_cnt + sz_masks + sz_pad);
    if (!m) return 0;
    s->rows = (uint64_t *)m;
    s->split = (uint64_t *)(m += sz_rows);
    s->cnt = (int32_t *)(m += sz_split);
    s->masks = (uint64_t *)(m += sz_cnt);
    s->padtap = (uint64_t *)(m + sz_masks);
    for (int64_t c = 0; c < p->Cw; ++c) {
        const int64_t bits = min64(64, p->C - 64 * c);
        s->padtap[c] = !p->pad_ones ? 0 : bits == 64 ? ~(uint64_t)0 : (((uint64_t)1 << bits) - 1);
    }
    return 1;
}

#define DEFINE_WORKER(NAME, TARGET, RUN)                                                         \
    TARGET static void NAME(conv_job *job, scratch *s) {                                         \
        for (;;) {                                                                               \
            const int64_t task = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);            \
            if (task >= job->tasks) break;                                                       \
            RUN(job, s, task);                                                                   \
        }                                                                                        \
    }
DEFINE_WORKER(work_generic, , run_task_words)
#ifdef HTAF_X86
DEFINE_WORKER(work_popcnt, __attribute__((target("popcnt"))), run_task_words)
DEFINE_WORKER(work_avx2, __attribute__((target("avx2,popcnt"))), run_task_avx2)
#endif

static void conv_part(void *ctx, int part) {
    (void)part;
    conv_job *job = ctx;
    scratch s;
    const int64_t rows = job->win_per_block * job->p->pool * job->p->pool;
    if (!scratch_alloc(&s, job->p, rows)) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
#ifdef HTAF_X86
    if (job->p->isa == ISA_AVX2) work_avx2(job, &s);
    else if (job->p->isa == ISA_POPCNT) work_popcnt(job, &s);
    else
#endif
        work_generic(job, &s);
}

/* Returns 0 on success, 1 on bad arguments, 2 when out of memory. */
int htaf_bconv(const bconv_t *p) {
    if ((p->kh * p->kw > 64 && (p->ph || p->pw)) || p->pool < 1 || p->mode < 0 || p->mode > 2 || p->O8 * 8 < p->O
        || p->K != p->kh * p->kw * p->Cw || !htaf_isa_supported(p->isa)
        || (p->isa == ISA_AVX2 && !p->wsplit) || (p->isa != ISA_AVX2 && !p->wpanel)
        || (p->zero_pad && !p->wsum) || (p->mode == 1 && (!p->thr || !p->flip)))
        return 1;
    conv_job job;
    memset(&job, 0, sizeof job);
    job.p = p;
    job.HO = (p->H + 2 * p->ph - p->dh * (p->kh - 1) - 1) / p->sh + 1;
    job.WO = (p->W + 2 * p->pw - p->dw * (p->kw - 1) - 1) / p->sw + 1;
    job.PH = job.HO / p->pool;
    job.PW = job.WO / p->pool;
    job.windows = p->B * job.PH * job.PW;
    if (job.windows <= 0 || p->O <= 0) return 0;
    const int64_t P2 = p->pool * p->pool;
    job.win_per_block = ROWS_PER_BLOCK / P2 > 0 ? ROWS_PER_BLOCK / P2 : 1;
    job.blocks = (job.windows + job.win_per_block - 1) / job.win_per_block;
    /* few blocks (small batch, late layers): split the channels too so every thread works */
    const int64_t threads = p->nthreads < 1 ? 1 : p->nthreads;
    int64_t chunks = 1;
    if (threads > 1 && job.blocks < 4 * threads)
        chunks = min64(p->O8, (4 * threads + job.blocks - 1) / job.blocks);
    job.o8_per_chunk = (p->O8 + chunks - 1) / chunks;
    if (p->isa == ISA_AVX2)   /* the AVX2 microkernel does 32 channels (4 groups) at a time */
        job.o8_per_chunk = (job.o8_per_chunk + 3) / 4 * 4;
    job.chunks = (p->O8 + job.o8_per_chunk - 1) / job.o8_per_chunk;
    job.tasks = job.blocks * job.chunks;
    pool_run((int)min64(threads, job.tasks), conv_part, &job);
    return job.failed ? 2 : 0;
}

/* ---- sign + pack a float NCHW tensor into [B, H*W, Cw] words (bit = x >= 0) ----------- */
typedef struct {
    const float *x;
    int64_t B, C, HW, Cw;
    uint64_t *out;
    int64_t parts, isa;
    const float *lo, *hi;   /* NULL: bit = x >= 0; else bit = lo[c] <= x <= hi[c] */
} pack_job;

#define PACK_PIX 8
/* Words of pixels p0 .. p0+np-1 (np <= 8) of image b, channel word cw, in plain C. */
static inline void pack_words(const pack_job *j, int64_t b, int64_t p0, int64_t np, int64_t cw,
                              uint64_t *acc) {
    const int64_t cn = min64(64, j->C - 64 * cw);
    for (int q = 0; q < PACK_PIX; ++q) acc[q] = 0;
    for (int64_t c = 0; c < cn; ++c) {
        const float *src = j->x + (b * j->C + 64 * cw + c) * j->HW + p0;
        if (j->lo) {
            const float lo = j->lo[64 * cw + c], hi = j->hi[64 * cw + c];
            for (int q = 0; q < np; ++q) acc[q] |= (uint64_t)(src[q] >= lo && src[q] <= hi) << c;
        } else {
            for (int q = 0; q < np; ++q) acc[q] |= (uint64_t)(src[q] >= 0.0f) << c;
        }
    }
}

#ifdef HTAF_X86
/* The same for 8 whole pixels with AVX2: one compare + movemask gives a channel's 8 pixel bits;
   8 channels' bytes form an 8x8 bit matrix, transposed (three masked swaps) into each pixel's
   byte of those 8 channels. */
__attribute__((target("avx2"))) static inline void pack_words8_avx2(const pack_job *j, int64_t b,
                                                                    int64_t p0, int64_t cw,
                                                                    uint64_t *acc) {
    const int64_t cn = min64(64, j->C - 64 * cw);
    const __m256 zero = _mm256_setzero_ps();
    for (int q = 0; q < PACK_PIX; ++q) acc[q] = 0;
    for (int64_t g = 0; g < cn; g += 8) {
        uint64_t m = 0;
        for (int64_t c = g; c < min64(cn, g + 8); ++c) {
            const float *src = j->x + (b * j->C + 64 * cw + c) * j->HW + p0;
            const __m256 v = _mm256_loadu_ps(src);
            __m256 on;   /* ordered compares: NaN gives 0 */
            if (j->lo)
                on = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(j->lo[64 * cw + c]), _CMP_GE_OQ),
                                   _mm256_cmp_ps(v, _mm256_set1_ps(j->hi[64 * cw + c]), _CMP_LE_OQ));
            else
                on = _mm256_cmp_ps(v, zero, _CMP_GE_OQ);
            m |= (uint64_t)(unsigned)_mm256_movemask_ps(on) << (8 * (c - g));
        }
        /* byte i = channel g+i, bit q = pixel q  ->  byte q = pixel q, bit i = channel g+i */
        uint64_t t;
        t = (m ^ (m >> 7)) & 0x00AA00AA00AA00AAull; m ^= t ^ (t << 7);
        t = (m ^ (m >> 14)) & 0x0000CCCC0000CCCCull; m ^= t ^ (t << 14);
        t = (m ^ (m >> 28)) & 0x00000000F0F0F0F0ull; m ^= t ^ (t << 28);
        for (int q = 0; q < PACK_PIX; ++q) acc[q] |= ((m >> (8 * q)) & 0xFF) << g;
    }
}
#endif

static inline __attribute__((always_inline)) void pack_range(const pack_job *j, int64_t part,
                                                             int isa) {
    const int64_t per = (j->HW + PACK_PIX - 1) / PACK_PIX, units = j->B * per;
    const int64_t u0 = units * part / j->parts, u1 = units * (part + 1) / j->parts;
    uint64_t acc[PACK_PIX];
    for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = u / per, p0 = (u % per) * PACK_PIX, np = min64(PACK_PIX, j->HW - p0);
        for (int64_t cw = 0; cw < j->Cw; ++cw) {
#ifdef HTAF_X86
            if (isa == ISA_AVX2 && np == PACK_PIX) pack_words8_avx2(j, b, p0, cw, acc);
            else
#endif
                pack_words(j, b, p0, np, cw, acc);
            for (int q = 0; q < np; ++q) j->out[(b * j->HW + p0 + q) * j->Cw + cw] = acc[q];
        }
    }
    (void)isa;
}
static void pack_generic(const pack_job *j, int64_t part) { pack_range(j, part, ISA_GENERIC); }
#ifdef HTAF_X86
__attribute__((target("avx2"))) static void pack_avx2(const pack_job *j, int64_t part) {
    pack_range(j, part, ISA_AVX2);
}
#endif
static void pack_part(void *ctx, int part) {
#ifdef HTAF_X86
    if (((const pack_job *)ctx)->isa == ISA_AVX2) { pack_avx2(ctx, part); return; }
#endif
    pack_generic(ctx, part);
}

/* bit = x >= 0, or, with per-channel bounds, lo[c] <= x <= hi[c] (a BatchNorm + sign folded
   into the packing: htaf/_fused.py finds the bounds). */
void htaf_pack_nchw(const float *x, int64_t B, int64_t C, int64_t HW, uint64_t *out,
                    int64_t nthreads, int64_t isa, const float *lo, const float *hi) {
    pack_job j = {x, B, C, HW, (C + 63) / 64, out, 1, isa, lo, hi};
    const int64_t units = B * ((HW + PACK_PIX - 1) / PACK_PIX);
    j.parts = min64(nthreads < 1 ? 1 : nthreads, units > 0 ? units : 1);
    pool_run((int)j.parts, pack_part, &j);
}

/* ---- popcount(a XOR w) summed over words: a [M, W], w [O, W] -> int32 [M, O] ------------ */
#define XOR_POPCOUNT(NAME, TARGET, T, POPCNT)                                                   \
    TARGET static void NAME(const T *a, const T *w, int64_t M, int64_t O, int64_t W, int32_t *out) { \
        for (int64_t m = 0; m < M; ++m) {                                                        \
            const T *ar = a + m * W;                                                             \
            int64_t o = 0;                                                                       \
            for (; o + 4 <= O; o += 4) {                                                         \
                const T *w0 = w + o * W, *w1 = w0 + W, *w2 = w1 + W, *w3 = w2 + W;               \
                int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                          \
                for (int64_t k = 0; k < W; ++k) {                                                \
                    const T v = ar[k];                                                           \
                    s0 += POPCNT(v ^ w0[k]); s1 += POPCNT(v ^ w1[k]);                            \
                    s2 += POPCNT(v ^ w2[k]); s3 += POPCNT(v ^ w3[k]);                            \
                }                                                                                \
                out[m * O + o] = s0; out[m * O + o + 1] = s1;                                    \
                out[m * O + o + 2] = s2; out[m * O + o + 3] = s3;                                \
            }                                                                                    \
            for (; o < O; ++o) {                                                                 \
                const T *wr = w + o * W;                                                         \
                int32_t s = 0;                                                                   \
                for (int64_t k = 0; k < W; ++k) s += POPCNT(ar[k] ^ wr[k]);                      \
                out[m * O + o] = s;                                                              \
            }                                                                                    \
        }                                                                                        \
    }
XOR_POPCOUNT(xp64_generic, , uint64_t, __builtin_popcountll)
XOR_POPCOUNT(xp32_generic, , uint32_t, __builtin_popcount)
#ifdef HTAF_X86
XOR_POPCOUNT(xp64_popcnt, __attribute__((target("popcnt"))), uint64_t, __builtin_popcountll)
XOR_POPCOUNT(xp32_popcnt, __attribute__((target("popcnt"))), uint32_t, __builtin_popcount)
#endif

void htaf_xor_popcount_u64(const uint64_t *a, const uint64_t *w, int64_t M, int64_t O, int64_t W,
                           int32_t *out, int64_t isa) {
#ifdef HTAF_X86
    if (isa >= ISA_POPCNT) { xp64_popcnt(a, w, M, O, W, out); return; }
#endif
    (void)isa;
    xp64_generic(a, w, M, O, W, out);
}

void htaf_xor_popcount_u32(const uint32_t *a, const uint32_t *w, int64_t M, int64_t O, int64_t W,
                           int32_t *out, int64_t isa) {
#ifdef HTAF_X86
    if (isa >= ISA_POPCNT) { xp32_popcnt(a, w, M, O, W, out); return; }
#endif
    (void)isa;
    xp32_generic(a, w, M, O, W, out);
}
