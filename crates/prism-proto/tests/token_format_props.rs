//! Property tests of the scannable token format: generated tokens validate, every single
//! character change and every truncation is refused with the fitting error, and arbitrary
//! input never panics and never validates unless it has the token's shape.

use prism_proto::SecretKind;
use prism_proto::token_format::{TokenFormatError, generate, validate};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const KIND: SecretKind = SecretKind::RefreshToken;

fn fresh() -> Result<String, TestCaseError> {
    generate(KIND).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// The error a token with its character at byte `index` replaced by `new` must get.
fn expected_error(index: usize, new: char) -> TokenFormatError {
    if index < KIND.prefix().len() {
        TokenFormatError::WrongPrefix
    } else if new.len_utf8() != 1 {
        TokenFormatError::WrongLength
    } else if !new.is_ascii_alphanumeric() {
        TokenFormatError::BadCharacter
    } else {
        // CRC32 catches every change of one byte (a burst of at most 8 bits), and a changed
        // checksum character no longer matches the unchanged random part.
        TokenFormatError::BadChecksum
    }
}

// Modest case counts keep CI fast; generation uses the OS CSPRNG, so every run sees new
// tokens on top of proptest's own inputs.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_tokens_validate(_run in 0u8..1) {
        let token = fresh()?;
        prop_assert_eq!(token.len(), KIND.token_len());
        prop_assert_eq!(validate(KIND, &token), Ok(()));
    }

    #[test]
    fn any_single_character_change_is_refused(position in any::<prop::sample::Index>(), new in any::<char>()) {
        let token = fresh()?;
        let index = position.index(token.len());
        let old = char::from(token.as_bytes()[index]);
        prop_assume!(new != old);
        let mut changed = token.clone();
        changed.replace_range(index..=index, new.encode_utf8(&mut [0; 4]));
        prop_assert_eq!(validate(KIND, &changed), Err(expected_error(index, new)));
    }

    #[test]
    fn any_truncation_is_refused(position in any::<prop::sample::Index>()) {
        let token = fresh()?;
        let keep = position.index(token.len());
        let expected = if keep == 0 {
            TokenFormatError::Empty
        } else if keep < KIND.prefix().len() {
            TokenFormatError::WrongPrefix
        } else {
            TokenFormatError::WrongLength
        };
        prop_assert_eq!(validate(KIND, &token[..keep]), Err(expected));
    }

    #[test]
    fn appending_anything_is_refused(suffix in "\\PC{1,8}") {
        let token = fresh()?;
        prop_assert_eq!(
            validate(KIND, &format!("{token}{suffix}")),
            Err(TokenFormatError::WrongLength)
        );
    }

    #[test]
    fn arbitrary_strings_never_validate_unless_well_shaped(input in any::<String>()) {
        if validate(KIND, &input).is_ok() {
            let body = input.strip_prefix(KIND.prefix()).unwrap_or("");
            prop_assert_eq!(input.len(), KIND.token_len());
            prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn well_shaped_strings_are_refused_only_for_their_checksum(body in "[0-9A-Za-z]{49}") {
        // The shape is right, so the only possible refusal is the checksum (a random body
        // matches its checksum with probability 62^-6, which is then a valid token).
        let result = validate(KIND, &format!("{}{body}", KIND.prefix()));
        prop_assert!(matches!(result, Ok(()) | Err(TokenFormatError::BadChecksum)), "{result:?}");
    }
}
