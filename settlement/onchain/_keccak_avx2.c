/* Keccak-256 of four one-block messages at once with XKCP's Keccak-f[1600]x4 in AVX2 lanes (vendor/xkcp).
   Only this translation unit is compiled for AVX2; the extension calls it only where the CPU has AVX2. */
#include "_keccak_batch.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC target("avx2")
#endif

#include "vendor/xkcp/KeccakP-1600-times4-SIMD256.c"

#define KECCAK256_X4_FUNCTION merkle_keccak256_x4
#include "_keccak_x4.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
