// TFLite's MultiplyByQuantizedMultiplier with single rounding (TFLITE_SINGLE_ROUNDING), pipelined
// (4 cycles, one result per cycle):
//   y = (x * m + 2**(n-1)) >> n = q + (bit n-1 of x * m),  n = 31 - sh  (0..62; the 64-bit product is
//   exact, rounded once)
// Ties go toward +inf; `even` (held for a whole layer) makes them go to even instead (ONNX's rounding,
// for layers the QDQ graph computes in float: bilinear resize). y keeps the low 32 bits.
// `tag` travels with the value (what to do with the result).
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
    // stage 1: operands, right shift n = 31 - sh
    reg               v1;
    reg signed [31:0] x1, m1;
    reg        [5:0]  n1;
    reg        [TW-1:0] t1;
    // stage 2: 64-bit product
    reg               v2;
    reg signed [63:0] p2;
    reg        [5:0]  n2;
    reg        [TW-1:0] t2;
    // stage 3: p >> (n - 1): the quotient and, below it, the half bit; the sticky OR of the bits under it
    reg               v3, sticky3;
    reg signed [32:0] t3;
    reg        [TW-1:0] t3_tag;

    wire signed [63:0] shifted = p2 >>> (n2 - 6'd1);
    wire        [63:0] below = (64'd1 << (n2 - 6'd1)) - 64'd1;
    // ties toward +inf add the half bit; ties to even add it when anything lies below it or q is odd
    wire               up = t3[0] & (~even | sticky3 | t3[1]);

    assign busy = v1 | v2 | v3 | out_valid;

    always @(posedge clk) begin
        if (rst) begin
            v1 <= 1'b0; v2 <= 1'b0; v3 <= 1'b0; out_valid <= 1'b0;
        end else begin
            v1 <= in_valid;
            v2 <= v1;
            v3 <= v2;
            out_valid <= v3;
        end
        x1 <= x;
        m1 <= m;
        n1 <= 6'd31 - sh[5:0];
        t1 <= in_tag;
        p2 <= x1 * m1;
        n2 <= n1;
        t2 <= t1;
        t3 <= (n2 == 6'd0) ? {p2[31:0], 1'b0} : shifted[32:0];
        sticky3 <= (n2 > 6'd1) && ((p2 & below) != 64'd0);
        t3_tag <= t2;
        y <= t3[32:1] + (up ? 32'sd1 : 32'sd0);
        out_tag <= t3_tag;
    end
endmodule
