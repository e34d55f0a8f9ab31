// llama-logits MODEL.gguf TOKENS.i32 N OUT.f32: the logits llama.cpp computes for every position
// of each row of N token ids (TOKENS.i32: rows of N int32, one after another), written as float32
// [rows, N, vocab]. Each row is one prefill from an empty cache, on the CPU, without weight
// repacking (see tests/llama_cpp.py). None of llama.cpp's programs prints whole logits.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf TOKENS.i32 N OUT.f32\n", argv[0]);
        return 2;
    }
    const int n = atoi(argv[3]);
    FILE * in = fopen(argv[2], "rb");
    if (!in || n <= 0) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 2;
    }
    std::vector<llama_token> tokens;
    llama_token t;
    while (fread(&t, sizeof t, 1, in) == 1) {
        tokens.push_back(t);
    }
    fclose(in);

    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.use_extra_bufts = false;  // --repack 0
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) {
        return 1;
    }
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n;
    cparams.n_batch = n;
    cparams.n_ubatch = n;
    cparams.type_k = GGML_TYPE_F32;  // an f16 cache rounds K and V: 4x the error on these logits
    cparams.type_v = GGML_TYPE_F32;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) {
        return 1;
    }
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    FILE * out = fopen(argv[4], "wb");
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (size_t row = 0; row + n <= tokens.size(); row += n) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = n;
        for (int i = 0; i < n; i++) {
            batch.token[i] = tokens[row + i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = true;
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            fwrite(llama_get_logits_ith(ctx, i), sizeof(float), vocab, out);
        }
    }
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
