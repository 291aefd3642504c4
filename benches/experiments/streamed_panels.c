/* The large step's product (4096 x 1024 packed, by 32 columns of B, ldb as the first
 * argument) with 32-row panels (12 + 12 + 8 columns) and with 48-row panels (4 x 8), A
 * streamed from L3 as in the per-step products. Session 23, benches/README.md.
 * gcc -O2 -march=native -o streamed_panels streamed_panels.c && ./streamed_panels 1040 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define K 1024
#define M 4096
#define N 32
static float *A32, *A48, *B, *C;
static int LDB = 1040;

static inline void k32x12(const float *a, const float *b, float *c, int ldc) {
  __m512 lo[12], hi[12];
  for (int j=0;j<12;j++){lo[j]=_mm512_setzero_ps();hi[j]=_mm512_setzero_ps();}
  for (int k=0;k<K;k++){
    __m512 al=_mm512_load_ps(a+32*k), ah=_mm512_load_ps(a+32*k+16);
    _mm_prefetch((const char*)(a+32*k+512),_MM_HINT_T0);
    _mm_prefetch((const char*)(a+32*k+528),_MM_HINT_T0);
    #pragma GCC unroll 12
    for(int j=0;j<12;j++){__m512 x=_mm512_set1_ps(b[j*LDB+k]); lo[j]=_mm512_fmadd_ps(al,x,lo[j]); hi[j]=_mm512_fmadd_ps(ah,x,hi[j]);}
  }
  for (int j=0;j<12;j++){_mm512_storeu_ps(c+j*ldc,lo[j]);_mm512_storeu_ps(c+j*ldc+16,hi[j]);}
}
static inline void k32x8(const float *a, const float *b, float *c, int ldc) {
  __m512 lo[8], hi[8];
  for (int j=0;j<8;j++){lo[j]=_mm512_setzero_ps();hi[j]=_mm512_setzero_ps();}
  for (int k=0;k<K;k++){
    __m512 al=_mm512_load_ps(a+32*k), ah=_mm512_load_ps(a+32*k+16);
    _mm_prefetch((const char*)(a+32*k+512),_MM_HINT_T0);
    _mm_prefetch((const char*)(a+32*k+528),_MM_HINT_T0);
    #pragma GCC unroll 8
    for(int j=0;j<8;j++){__m512 x=_mm512_set1_ps(b[j*LDB+k]); lo[j]=_mm512_fmadd_ps(al,x,lo[j]); hi[j]=_mm512_fmadd_ps(ah,x,hi[j]);}
  }
  for (int j=0;j<8;j++){_mm512_storeu_ps(c+j*ldc,lo[j]);_mm512_storeu_ps(c+j*ldc+16,hi[j]);}
}
static inline void k48x8(const float *a, const float *b, float *c, int ldc) {
  __m512 r0[8], r1[8], r2[8];
  for (int j=0;j<8;j++){r0[j]=_mm512_setzero_ps();r1[j]=_mm512_setzero_ps();r2[j]=_mm512_setzero_ps();}
  for (int k=0;k<K;k++){
    __m512 a0=_mm512_load_ps(a+48*k), a1=_mm512_load_ps(a+48*k+16), a2=_mm512_load_ps(a+48*k+32);
    _mm_prefetch((const char*)(a+48*k+768),_MM_HINT_T0);
    _mm_prefetch((const char*)(a+48*k+784),_MM_HINT_T0);
    _mm_prefetch((const char*)(a+48*k+800),_MM_HINT_T0);
    #pragma GCC unroll 8
    for(int j=0;j<8;j++){__m512 x=_mm512_set1_ps(b[j*LDB+k]); r0[j]=_mm512_fmadd_ps(a0,x,r0[j]); r1[j]=_mm512_fmadd_ps(a1,x,r1[j]); r2[j]=_mm512_fmadd_ps(a2,x,r2[j]);}
  }
  for (int j=0;j<8;j++){_mm512_storeu_ps(c+j*ldc,r0[j]);_mm512_storeu_ps(c+j*ldc+16,r1[j]);_mm512_storeu_ps(c+j*ldc+32,r2[j]);}
}
/* groups of panels of about GROUP bytes, every block of B over a group before the next */
#define GROUP (1<<20)
static void prod32(void){
  int panels=M/32, per=GROUP/(32*K*4);
  for(int g=0;g<panels;g+=per)
    for(int jb=0;jb<N;){
      int w = (N-jb>=12)?12:8;
      for(int p=g;p<g+per&&p<panels;p++){
        if(w==12) k32x12(A32+(size_t)p*32*K, B+jb*LDB, C+jb*M+p*32, M);
        else k32x8(A32+(size_t)p*32*K, B+jb*LDB, C+jb*M+p*32, M);
      }
      jb+=w;
    }
}
static void prod48(void){
  int panels=M/48, per=GROUP/(48*K*4);
  for(int g=0;g<panels;g+=per)
    for(int jb=0;jb<N;jb+=8)
      for(int p=g;p<g+per&&p<panels;p++)
        k48x8(A48+(size_t)p*48*K, B+jb*LDB, C+jb*M+p*48, M);
}
int main(int argc, char**argv){
  if(argc>1) LDB=atoi(argv[1]);
  A32=aligned_alloc(64,(size_t)M*K*4); A48=aligned_alloc(64,(size_t)M*K*4);
  B=aligned_alloc(64,(size_t)LDB*N*4); C=aligned_alloc(64,(size_t)M*N*4);
  for(size_t i=0;i<(size_t)M*K;i++){A32[i]=(i%97)*1e-3f;A48[i]=(i%89)*1e-3f;}
  for(size_t i=0;i<(size_t)LDB*N;i++)B[i]=(i%13)*1e-2f;
  for(int round=0;round<3;round++){
    double best32=1e9,best48=1e9;
    for(int r=0;r<20;r++){double t=now();prod32();t=now()-t;if(t<best32)best32=t;
                          t=now();prod48();t=now()-t;if(t<best48)best48=t;}
    double f32=2.0*M*K*N, f48=2.0*(M/48*48)*K*N;
    printf("32x12+8: %.1f GF/s   48x8: %.1f GF/s\n", f32/best32/1e9, f48/best48/1e9);
  }
  printf("(%g)\n", C[5]);
  return 0;
}
