/* Keccak-256 of four one-block messages at once with XKCP's Keccak-f[1600]x4 on AVX-512VL (vendor/xkcp-avx512):
   the same four 256-bit lanes as _keccak_avx2.c, with AVX-512's rotate and three-input logic instructions (about
   half the instructions per round). Only this translation unit is compiled for AVX-512; the extension calls it only
   where the CPU has AVX-512F and AVX-512VL. */
#include "_keccak_batch.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,avx512f,avx512vl"))), apply_to = function)
#else
#pragma GCC target("avx2,avx512f,avx512vl")
#endif

/* The vendored file defines the same public names as the AVX2 one (both are XKCP's times4 interface): renamed
   here so both link into one extension. */
#define KeccakP1600times4_InitializeAll merkle_avx512_InitializeAll
#define KeccakP1600times4_AddBytes merkle_avx512_AddBytes
#define KeccakP1600times4_AddLanesAll merkle_avx512_AddLanesAll
#define KeccakP1600times4_OverwriteBytes merkle_avx512_OverwriteBytes
#define KeccakP1600times4_OverwriteLanesAll merkle_avx512_OverwriteLanesAll
#define KeccakP1600times4_OverwriteWithZeroes merkle_avx512_OverwriteWithZeroes
#define KeccakP1600times4_PermuteAll_4rounds merkle_avx512_PermuteAll_4rounds
#define KeccakP1600times4_PermuteAll_6rounds merkle_avx512_PermuteAll_6rounds
#define KeccakP1600times4_PermuteAll_12rounds merkle_avx512_PermuteAll_12rounds
#define KeccakP1600times4_PermuteAll_24rounds merkle_avx512_PermuteAll_24rounds
#define KeccakP1600times4_ExtractBytes merkle_avx512_ExtractBytes
#define KeccakP1600times4_ExtractLanesAll merkle_avx512_ExtractLanesAll
#define KeccakP1600times4_ExtractAndAddBytes merkle_avx512_ExtractAndAddBytes
#define KeccakP1600times4_ExtractAndAddLanesAll merkle_avx512_ExtractAndAddLanesAll
#define KeccakF1600times4_FastLoop_Absorb merkle_avx512_FastLoop_Absorb
#define KeccakP1600times4_12rounds_FastLoop_Absorb merkle_avx512_12rounds_FastLoop_Absorb

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-variable" /* two in the vendored file, kept unchanged */
#include "vendor/xkcp-avx512/KeccakP-1600-times4-SIMD512.c"
#pragma GCC diagnostic pop

#define KECCAK256_X4_FUNCTION merkle_keccak256_x4_avx512
#include "_keccak_x4.h"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
