//! Byte-level BPE tokenizer training (for models trained from scratch), shaped like
//! GPT-NeoX's tokenizer: byte-level pre-tokenizer without prefix space, byte-level decoder,
//! special tokens <|endoftext|> (id 0) and <|padding|> (id 1).

use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, TokenizerBuilder};

pub const EOS: &str = "<|endoftext|>";
pub const PAD: &str = "<|padding|>";

/// Trains a tokenizer of at most `vocab_size` tokens on `texts` and writes tokenizer.json.
pub fn train_bpe(texts: &[String], vocab_size: usize, out: &Path) -> Result<()> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| {
        Error::Other(format!("BPE training failed: {e}"))
    };
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(EOS, true),
            AddedToken::from(PAD, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tk = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))))
    .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
    .build()
    .map_err(err)?;
    tk.train(&mut trainer, texts.iter()).map_err(err)?;
    tk.save(out, false).map_err(err)?;
    Ok(())
}
