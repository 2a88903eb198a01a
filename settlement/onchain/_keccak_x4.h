/* Keccak-256 of four one-block messages by the XKCP times4 code the including file has just included (its AVX2 or
   its AVX-512VL permutation): the including file names the function (KECCAK256_X4_FUNCTION). */
void KECCAK256_X4_FUNCTION(const unsigned char *messages, unsigned int length, unsigned char *digests)
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
