//! The closed sets of string values an option takes (`mode = "enforce" | "shadow"`), each
//! declared once.
//!
//! Why a macro: the same set appears in the file format (serde's names), in the option's
//! declaration (the "one of …" hint of every error about it, the values the settings tests
//! try), in `check-config`'s summary and, for the log format, in the command line's
//! possible values. [`choice!`] writes all of those from one list of `Variant = "name"` pairs,
//! so a value cannot be added to the enum without being known everywhere.

/// Declares a closed set: the enum (with serde's `Deserialize` under the given names) and
/// `NAMES`, `ALL`, `as_str`, `help` and `Display` derived from the same pairs.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident = $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
        pub enum $name {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every value as written in the config file, in the order the docs list them.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// Every value, in the order of [`Self::NAMES`].
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// How this value is written in the config file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// What this value means: its doc comment, one line without the final period
            /// (the command line's help for a possible value).
            pub fn help(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!($($doc),*).trim().trim_end_matches('.'),)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(super) use choice;
