/* Keccak-256 (Ethereum's: the original 0x01 padding) of one-block messages, by the vendored code in vendor/. */
#ifndef MERKLE_KECCAK_BATCH_H
#define MERKLE_KECCAK_BATCH_H

#define KECCAK256_RATE_BYTES 136
#define KECCAK256_DIGEST_BYTES 32

/* Four messages of `length` bytes each (a multiple of 8, below the rate), one after the other at `messages`;
   their four digests one after the other at `digests`. XKCP's AVX2 code: call only where the CPU has AVX2. */
void merkle_keccak256_x4(const unsigned char *messages, unsigned int length, unsigned char *digests);

/* The same, by XKCP's AVX-512VL code: call only where the CPU has AVX-512F and AVX-512VL. */
void merkle_keccak256_x4_avx512(const unsigned char *messages, unsigned int length, unsigned char *digests);

/* One message of `length` bytes (below the rate): PQClean's portable Keccak, for CPUs without AVX2. */
void merkle_keccak256_one(const unsigned char *message, unsigned int length, unsigned char *digest);

#endif
