/* Keccak-256 of one one-block message with PQClean's portable Keccak (vendor/pqclean), where AVX2 is absent. */
#include "_keccak_batch.h"
#include "vendor/pqclean/fips202.c"

void merkle_keccak256_one(const unsigned char *message, unsigned int length, unsigned char *digest)
{
    uint64_t state[25];
    uint8_t block[KECCAK256_RATE_BYTES];
    keccak_absorb(state, KECCAK256_RATE_BYTES, message, length, 0x01);
    keccak_squeezeblocks(block, 1, state, KECCAK256_RATE_BYTES);
    memcpy(digest, block, KECCAK256_DIGEST_BYTES);
}
