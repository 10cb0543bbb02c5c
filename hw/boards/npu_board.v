// Board top for the edgegen NPU: npu_top behind the UART link (npu_uart.v), a power-on reset and
// two status LEDs. One module for every board, inside a generated top (edgegen's bitstream stage) that
// feeds it the board's oscillator or a PLL's output; clk_ready holds it in reset until that clock is
// stable (the PLL's lock; tied high without a PLL).
// The static memories start from the $readmemh images (*_INIT), so the bitstream carries the model
// (except a single-port WGT, WGT_SINGLE_PORT = 1: the host loads it over the link).
module npu_board #(
    parameter CLK_HZ = 12000000,
    parameter BAUD = 1000000,
    parameter LED_ACTIVE_LOW = 0,
    parameter LANES = 8,
    parameter ACT_BANKS = 1,
    parameter WGT_SINGLE_PORT = 0,
    parameter ACT_WORDS = 4096,
    parameter WGT_WORDS = 4096,
    parameter PAR_WORDS = 512,
    parameter LUT_BYTES = 4096,
    parameter TAP_WORDS = 1024,
    parameter PROG_WORDS = 1024,
    parameter WGT_INIT = "",
    parameter PAR_INIT = "",
    parameter LUT_INIT = "",
    parameter TAP_INIT = "",
    parameter PROG_INIT = ""
) (
    input  wire clk,
    input  wire clk_ready,
    input  wire uart_rx,
    output wire uart_tx,
    output wire led_busy,
    output wire led_done
);
    localparam DIV = CLK_HZ / BAUD;
    reg [7:0] por = 8'd0;                      // held in reset for 128 stable cycles after configuration
    wire rst = !por[7];
    always @(posedge clk)
        if (!clk_ready) por <= 8'd0;
        else if (rst) por <= por + 1'b1;

    wire [7:0]  rx_data, tx_data, h_wdata, h_rdata;
    wire        rx_valid, tx_send, tx_ready, h_we, h_re, h_rvalid, busy, done, layer_done;
    wire [23:0] h_addr;

    npu_uart_rx #(.DIV(DIV)) rx (.clk(clk), .rst(rst), .rx(uart_rx), .data(rx_data), .valid(rx_valid));
    npu_uart_tx #(.DIV(DIV)) tx (.clk(clk), .rst(rst), .data(tx_data), .send(tx_send), .ready(tx_ready),
                                 .tx(uart_tx));
    npu_uart_bridge bridge (.clk(clk), .rst(rst), .rx_data(rx_data), .rx_valid(rx_valid), .tx_data(tx_data),
                            .tx_send(tx_send), .tx_ready(tx_ready), .h_addr(h_addr), .h_wdata(h_wdata),
                            .h_we(h_we), .h_re(h_re), .h_rdata(h_rdata), .h_rvalid(h_rvalid), .busy(busy));
    npu_top #(.LANES(LANES), .ACT_BANKS(ACT_BANKS), .WGT_SINGLE_PORT(WGT_SINGLE_PORT), .ACT_WORDS(ACT_WORDS), .WGT_WORDS(WGT_WORDS), .PAR_WORDS(PAR_WORDS),
              .LUT_BYTES(LUT_BYTES), .TAP_WORDS(TAP_WORDS), .PROG_WORDS(PROG_WORDS), .WGT_INIT(WGT_INIT),
              .PAR_INIT(PAR_INIT), .LUT_INIT(LUT_INIT), .TAP_INIT(TAP_INIT), .PROG_INIT(PROG_INIT)) npu (
        .clk(clk), .rst(rst), .h_addr(h_addr), .h_wdata(h_wdata), .h_we(h_we), .h_re(h_re), .h_rdata(h_rdata),
        .h_rvalid(h_rvalid), .busy(busy), .done(done), .layer_done(layer_done));

    assign led_busy = busy ^ (LED_ACTIVE_LOW != 0);
    assign led_done = done ^ (LED_ACTIVE_LOW != 0);
endmodule
