//! huddle-lm: the model runtime. Model architectures (our own code on
//! candle), weights from Hugging Face directories and GGUF files,
//! tokenizers, chat templates, sampling and generation.
//!
//! Every linear layer is built so that it can be split across ranks later;
//! nothing here allocates per generated token beyond what candle needs.
