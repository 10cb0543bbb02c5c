// TFLite's MultiplyByQuantizedMultiplier with single rounding (TFLITE_SINGLE_ROUNDING), pipelined
// (6 cycles, one result per cycle):
//   y = (x * m + 2**(n-1)) >> n = q + (bit n-1 of x * m),  n = 31 - sh  (0..62; the 64-bit product is
//   exact, rounded once)
// Ties go toward +inf; `even` (held for a whole layer) makes them go to even instead (ONNX's rounding,
// for layers the QDQ graph computes in float: bilinear resize). y keeps the low 32 bits.
// `tag` travels with the value (what to do with the result).
// Stages: 1 operands | 2 four 16 x 16 partial products (one DSP each) | 3 the 64-bit product |
// 4 shift right by a multiple of 8 | 5 by the rest, sticky bit | 6 rounding.
module npu_requant #(
    parameter TW = 8
) (
    input  wire               clk,
    input  wire               rst,
    input  wire               in_valid,
    input  wire               even,
    input  wire signed [31:0] x,
    input  wire signed [31:0] m,
    input  wire signed [7:0]  sh,
    input  wire [TW-1:0]      in_tag,
    output reg                out_valid,
    output reg  signed [31:0] y,
    output reg  [TW-1:0]      out_tag,
    output wire               busy
);
    reg [5:1] v;                           // stage valids
    // stage 1: operands; s = n - 1, the right shift that leaves the half bit at bit 0 (n = 0: s = 0)
    reg signed [31:0] x1, m1;
    reg        [5:0]  s1;
    reg               z1;                  // n == 0: y is the product's low 32 bits
    reg        [TW-1:0] t1;
    // stage 2: partial products x = xh * 2**16 + xl, m = mh * 2**16 + ml (xh, mh signed; xl, ml not)
    reg signed [31:0] hh2, hl2, lh2;
    reg        [31:0] ll2;
    reg        [5:0]  s2;
    reg               z2;
    reg        [TW-1:0] t2;
    // stage 3: the exact product xh * mh * 2**32 + xl * ml + (xh * ml + xl * mh) * 2**16 (the partial
    // products go straight into adders: Yosys mis-merges a DSP product registered twice)
    reg signed [63:0] p3;
    reg        [5:0]  s3;
    reg               z3;
    reg        [TW-1:0] t3;
    // stage 4: p >> (8 * s[5:3]); sticky: a bit shifted out is set
    reg signed [63:0] p4;
    reg        [2:0]  s4;
    reg               z4, sticky4;
    reg        [TW-1:0] t4;
    // stage 5: p >> s: the quotient and, below it, the half bit
    reg signed [32:0] q5;
    reg               sticky5;
    reg        [TW-1:0] t5;

    wire       [5:0]  n = 6'd31 - sh[5:0];
    wire       [7:0]  byte_or;             // byte k of the product has a set bit
    wire       [7:0]  byte_below;          // byte k lies below the coarse shift
    wire       [6:0]  bit_below;           // bit i of p4 lies below the fine shift
    genvar k;
    generate
        for (k = 0; k < 8; k = k + 1) begin : bytes
            assign byte_or[k] = |p3[8*k +: 8];
            assign byte_below[k] = k < s3[5:3];
        end
        for (k = 0; k < 7; k = k + 1) begin : bits
            assign bit_below[k] = k < s4;
        end
    endgenerate
    // ties toward +inf add the half bit; ties to even add it when anything lies below it or q is odd
    wire               up = q5[0] & (~even | sticky5 | q5[1]);

    assign busy = (|v) | out_valid;

    always @(posedge clk) begin
        if (rst) begin
            v <= 5'd0; out_valid <= 1'b0;
        end else begin
            v <= {v[4:1], in_valid};
            out_valid <= v[5];
        end
        x1 <= x;
        m1 <= m;
        s1 <= (n == 6'd0) ? 6'd0 : n - 6'd1;
        z1 <= (n == 6'd0);
        t1 <= in_tag;

        hh2 <= $signed(x1[31:16]) * $signed(m1[31:16]);
        hl2 <= $signed(x1[31:16]) * $signed({1'b0, m1[15:0]});
        lh2 <= $signed({1'b0, x1[15:0]}) * $signed(m1[31:16]);
        ll2 <= x1[15:0] * m1[15:0];
        s2 <= s1; z2 <= z1; t2 <= t1;

        p3 <= $signed({hh2, ll2}) + ((hl2 + lh2) <<< 16);
        s3 <= s2; z3 <= z2; t3 <= t2;

        p4 <= p3 >>> {s3[5:3], 3'b000};
        sticky4 <= |(byte_or & byte_below);
        s4 <= s3[2:0]; z4 <= z3; t4 <= t3;

        q5 <= z4 ? {p4[31:0], 1'b0} : (p4 >>> s4);
        sticky5 <= sticky4 | (|(p4[6:0] & bit_below));
        t5 <= t4;

        y <= q5[32:1] + (up ? 32'sd1 : 32'sd0);
        out_tag <= t5;
    end
endmodule
