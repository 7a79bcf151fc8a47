//! The gRPC codec of every generated client and server: prost's, except that a message that
//! does not decode (malformed protobuf, a `string` field that is not UTF-8) is
//! INVALID_ARGUMENT rather than prost's INTERNAL. A request that does not decode is the
//! sender's fault, final, and says nothing about the node's health; INTERNAL would send an
//! operator looking for a bug in the node. (In a client, a response that does not decode means
//! a peer of another version: equally final.)

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with the decode-error mapping above.
#[derive(Debug, Clone)]
pub struct InvalidArgumentCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for InvalidArgumentCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for InvalidArgumentCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = InvalidArgumentDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        InvalidArgumentDecoder(self.0.decoder())
    }
}

/// prost's decoder, its decode errors answered as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct InvalidArgumentDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for InvalidArgumentDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        match U::decode(buf) {
            Ok(item) => Ok(Some(item)),
            Err(error) => Err(Status::invalid_argument(format!(
                "malformed {} message: {error}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("protobuf")
            ))),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
