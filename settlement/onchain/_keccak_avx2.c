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

void merkle_keccak256_x4(const unsigned char *messages, unsigned int length, unsigned char *digests)
{
    ALIGN(KeccakP1600times4_statesAlignment) unsigned char states[KeccakP1600times4_statesSizeInBytes];
    KeccakP1600times4_InitializeAll(states);
    KeccakP1600times4_AddLanesAll(states, messages, length / 8, length / 8);
    for (unsigned int instance = 0; instance < 4; instance++) {
        KeccakP1600times4_AddByte(states, instance, 0x01, length);
        KeccakP1600times4_AddByte(states, instance, 0x80, KECCAK256_RATE_BYTES - 1);
    }
    KeccakP1600times4_PermuteAll_24rounds(states);
    KeccakP1600times4_ExtractLanesAll(states, digests, KECCAK256_DIGEST_BYTES / 8, KECCAK256_DIGEST_BYTES / 8);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
