/* How fast this machine runs the packed kernels' pattern with everything in L1: a
 * register block of MV 16-lane vectors of A (loaded) times NC broadcast values of B
 * (loaded), against multiply-adds from registers alone. Session 23, benches/README.md.
 * gcc -O2 -march=native -o kernel_patterns kernel_patterns.c && ./kernel_patterns */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float A[64 * 64] __attribute__((aligned(64)));
static float B[64 * 24] __attribute__((aligned(64)));
static const long ITERATIONS = 20000000;

/* MV vectors of A (16 * MV rows) times NC columns of B over 64 packed columns. */
#define BLOCK(NAME, MV, NC) { \
    __m512 acc[MV][NC]; \
    for (int v = 0; v < MV; v++) for (int j = 0; j < NC; j++) acc[v][j] = _mm512_setzero_ps(); \
    long reps = ITERATIONS / 64; \
    double t0 = now(); \
    for (long r = 0; r < reps; r++) { \
        for (int k = 0; k < 64; k++) { \
            __m512 av[MV]; \
            _Pragma("GCC unroll 4") for (int v = 0; v < MV; v++) av[v] = _mm512_load_ps(A + 16 * MV * k + 16 * v); \
            _Pragma("GCC unroll 24") for (int j = 0; j < NC; j++) { \
                __m512 x = _mm512_set1_ps(B[j * 64 + k]); \
                _Pragma("GCC unroll 4") for (int v = 0; v < MV; v++) acc[v][j] = _mm512_fmadd_ps(av[v], x, acc[v][j]); \
            } \
        } \
        __asm__ volatile("" ::: "memory"); \
    } \
    double t = now() - t0; \
    float s = 0; \
    for (int v = 0; v < MV; v++) for (int j = 0; j < NC; j++) s += _mm512_reduce_add_ps(acc[v][j]); \
    printf("%-28s %6.1f GF/s (%g)\n", NAME, reps * 64.0 * MV * NC * 32 / t / 1e9, s); \
}

int main(void) {
    for (int i = 0; i < 64 * 64; i++) A[i] = i * 1e-6f;
    for (int i = 0; i < 64 * 24; i++) B[i] = i * 1e-6f;
    {
        __m512 acc[24];
        for (int j = 0; j < 24; j++) acc[j] = _mm512_setzero_ps();
        __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
        double t0 = now();
        for (long i = 0; i < ITERATIONS; i++) {
            _Pragma("GCC unroll 24") for (int j = 0; j < 24; j++) acc[j] = _mm512_fmadd_ps(a, b, acc[j]);
            __asm__ volatile("" : "+v"(a));
        }
        double t = now() - t0;
        float s = 0;
        for (int j = 0; j < 24; j++) s += _mm512_reduce_add_ps(acc[j]);
        printf("%-28s %6.1f GF/s (%g)\n", "from registers (24 chains)", ITERATIONS * 24 * 32.0 / t / 1e9, s);
    }
    BLOCK("32 rows x 12 (the kernels')", 2, 12)
    BLOCK("48 rows x 8", 3, 8)
    BLOCK("64 rows x 6", 4, 6)
    BLOCK("32 rows x 14", 2, 14)
    BLOCK("16 rows x 24", 1, 24)
    return 0;
}
